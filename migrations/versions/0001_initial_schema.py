"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Two foreign keys close cycles (a consolidation job trains a base model that later jobs build
on; a job produces an adapter version that points back at its job). They are added after both
tables exist.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_entity", ["entity", "entity_id"], unique=False)

    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["base_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.create_index(
            "uq_base_models_active",
            ["is_active"],
            unique=True,
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )

    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=512), nullable=False),
        sa.Column("genres", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("gender", sa.String(length=32), nullable=True),
        sa.Column("age", sa.String(length=32), nullable=True),
        sa.Column("occupation", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_users_quarantined_at"), ["quarantined_at"], unique=False
        )

    op.create_table(
        "interactions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Float(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["items.id"],
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_interactions_item_id"), ["item_id"], unique=False)
        batch_op.create_index("ix_interactions_user_ts", ["user_id", "ts"], unique=False)

    op.create_table(
        "unlearning_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retry_of_id", sa.Integer(), nullable=True),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("request_count", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=True),
        sa.Column("adapter_version_id", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
        ),
        sa.ForeignKeyConstraint(
            ["retry_of_id"],
            ["unlearning_jobs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_unlearning_jobs_status"), ["status"], unique=False)

    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("forgotten_users", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("probes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["unlearning_jobs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["adapter_versions.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_adapter_versions_active",
            ["is_active"],
            unique=True,
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )

    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.create_foreign_key("fk_base_models_job", "unlearning_jobs", ["job_id"], ["id"])
    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_jobs_adapter_version", "adapter_versions", ["adapter_version_id"], ["id"]
        )

    op.create_table(
        "forget_requests",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("user_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("adapter_version_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["unlearning_jobs.id"],
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_forget_requests_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_forget_requests_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_forget_requests_user_hash"), ["user_hash"], unique=False
        )
        batch_op.create_index(
            "uq_forget_requests_open_user",
            ["user_id"],
            unique=True,
            postgresql_where=sa.text("status <> 'completed'"),
            sqlite_where=sa.text("status <> 'completed'"),
        )

    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "request_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("user_hash", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("adapter_version_id", sa.Integer(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interactions_deleted", sa.Integer(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["adapter_version_id"],
            ["adapter_versions.id"],
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["unlearning_jobs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["forget_requests.id"],
        ),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )

    op.create_table(
        "service_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("service_state")
    op.drop_table("certificates")
    with op.batch_alter_table("forget_requests", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_forget_requests_open_user",
            postgresql_where=sa.text("status <> 'completed'"),
            sqlite_where=sa.text("status <> 'completed'"),
        )
        batch_op.drop_index(batch_op.f("ix_forget_requests_user_hash"))
        batch_op.drop_index(batch_op.f("ix_forget_requests_status"))
        batch_op.drop_index(batch_op.f("ix_forget_requests_job_id"))

    op.drop_table("forget_requests")
    with op.batch_alter_table("adapter_versions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_adapter_versions_active",
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )

    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_adapter_version", type_="foreignkey")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_constraint("fk_base_models_job", type_="foreignkey")
    op.drop_table("adapter_versions")
    with op.batch_alter_table("unlearning_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unlearning_jobs_status"))

    op.drop_table("unlearning_jobs")
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_user_ts")
        batch_op.drop_index(batch_op.f("ix_interactions_item_id"))

    op.drop_table("interactions")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_quarantined_at"))

    op.drop_table("users")
    op.drop_table("items")
    with op.batch_alter_table("base_models", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_base_models_active",
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        )

    op.drop_table("base_models")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_entity")

    op.drop_table("audit_log")
