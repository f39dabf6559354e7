"""signed deletion receipts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

A completed request's certificate becomes a receipt a third party can check: canonical JSON,
signed with the service's Ed25519 key, each carrying the hash of the previous one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["forget_requests.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq"),
        sa.UniqueConstraint("hash"),
    )
    op.create_index("ix_receipts_request_id", "receipts", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_receipts_request_id", table_name="receipts")
    op.drop_table("receipts")
