"""The secrets-derived parts of the domain: what is kept of a user id once the data is gone,
and which users are held out of training as the audit set. Both are keyed by the deployment's
salt (``Settings.salt()``), so neither can be recomputed without it."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def user_hash(salt: bytes, external_id: str) -> str:
    """What is kept of a user id once the data is gone: HMAC-SHA256 with a secret salt (a plain
    hash of a small id space could be reversed by trying every id)."""
    return hmac.new(salt, external_id.encode(), hashlib.sha256).hexdigest()


def is_audit_user(salt: bytes, user_id: int, fraction: float) -> bool:
    """A fixed, secret-keyed fraction of users the base is never trained on. Their samples
    from the training period are what "never seen" looks like, which the unlearning checks
    compare the forget set against (samples from a later period differ for other reasons too).
    Serving treats them like everyone else."""
    digest = hmac.new(salt, f"audit:{user_id}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def secret_file(path: Path) -> str:
    """The secret kept in ``path``: 32 random bytes (hex) written once, readable by the owner
    only. Created under a temporary name and hard-linked into place, so a file appears
    complete or not at all, and when several processes race the first one wins."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner only
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
