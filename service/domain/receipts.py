"""Deletion receipts a third party can check: canonical JSON, signed with the service's Ed25519
key, each carrying the SHA-256 of the previous receipt (an append-only chain, as Certificate
Transparency logs are), so a receipt can be neither altered nor silently dropped.

Two kinds per request, appended in this order:

- ``unlearned``: the user's data was deleted and an adapter that the quality gate judged to have
  removed their influence serves on base model N. That base itself was trained with the user's
  data and still holds it; the receipt says so.
- ``never_trained``: no serving model was trained on the user's data (none of it fell in the
  base's training window); the data was deleted.
- ``consolidated``: a base retrained on data that no longer holds the user now serves (every
  base that saw the user is deleted); appended for every completed request when a
  consolidation runs.

Receipts are appended inside the transactions that complete requests, which hold the queue's
lock: the chain has one writer at a time. Verification needs only the public key
(``GET /certificates/public-key``) and the receipts (``e2urec-service verify-certificate``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.db.models import Receipt
from service.core.security import secret_file

GENESIS = "0" * 64
VERSION = 1


class ReceiptError(ValueError):
    """A receipt or a chain that does not verify."""


def canonical(body: dict[str, Any]) -> str:
    """The one serialisation that is hashed and signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey

    @classmethod
    def from_seed_hex(cls, seed: str) -> Signer:
        raw = bytes.fromhex(seed.strip())
        if len(raw) != 32:
            raise ValueError("the signing key must be 32 bytes, hex encoded (64 characters)")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """The key in ``path``, generated once (owner-only file) if it does not exist."""
        return cls.from_seed_hex(secret_file(path))

    @property
    def public_hex(self) -> str:
        return public_hex(self.key.public_key())

    def sign(self, payload: str) -> str:
        return base64.b64encode(self.key.sign(payload.encode())).decode()


def public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def append(session: Session, signer: Signer, request_id: int, kind: str, body: dict) -> Receipt:
    """Append a receipt for forget request row ``request_id`` to the chain. The caller holds
    the queue lock (one writer)."""
    last = session.scalars(select(Receipt).order_by(Receipt.seq.desc()).limit(1)).first()
    seq = last.seq + 1 if last is not None else 1
    prev = last.hash if last is not None else GENESIS
    full = {"version": VERSION, "seq": seq, "kind": kind, "prev_hash": prev} | body
    payload = canonical(full)
    receipt = Receipt(
        seq=seq,
        request_id=request_id,
        kind=kind,
        payload=payload,
        hash=sha256_hex(payload),
        prev_hash=prev,
        signature=signer.sign(payload),
    )
    session.add(receipt)
    session.flush()
    return receipt


def as_document(receipt: Receipt) -> dict[str, Any]:
    """What a client stores and a verifier reads: the signed text, its hash and signature."""
    return {"payload": receipt.payload, "hash": receipt.hash, "signature": receipt.signature}


# -- verification (needs no database) ----------------------------------------------------------


def verify(document: dict[str, Any], public_key_hex: str) -> dict[str, Any]:
    """Check one receipt's hash and signature; returns its body."""
    try:
        payload, digest, signature = (
            document["payload"],
            document["hash"],
            document["signature"],
        )
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptError(f"not a receipt or not a public key: {exc}") from None
    if sha256_hex(payload) != digest:
        raise ReceiptError("the receipt's text does not match its hash: it was altered")
    try:
        key.verify(base64.b64decode(signature), payload.encode())
    except (InvalidSignature, ValueError):
        raise ReceiptError("the signature does not verify with this public key") from None
    body = json.loads(payload)
    if canonical(body) != payload:
        raise ReceiptError("the receipt's text is not in canonical form")
    return body


def verify_chain(documents: list[dict[str, Any]], public_key_hex: str) -> list[dict[str, Any]]:
    """Check every receipt, and that each names the hash of the one before it with no gap in
    the sequence. A chain that starts at seq 1 must start from the genesis hash."""
    bodies = []
    for k, document in enumerate(documents):
        body = verify(document, public_key_hex)
        if k == 0:
            if body["seq"] == 1 and body["prev_hash"] != GENESIS:
                raise ReceiptError("receipt 1 does not start from the genesis hash")
        else:
            before = bodies[-1]
            if body["seq"] != before["seq"] + 1:
                raise ReceiptError(
                    f"the chain has a gap: receipt {before['seq']} is followed by {body['seq']}"
                )
            if body["prev_hash"] != documents[k - 1]["hash"]:
                raise ReceiptError(
                    f"receipt {body['seq']} does not name the hash of receipt {before['seq']}: "
                    "the chain is broken"
                )
        bodies.append(body)
    return bodies
