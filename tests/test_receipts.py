"""Deletion receipts: signed, chained, checkable offline; a tampered receipt or a broken chain
fails verification."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from e2urec.atomic import folder_sha256
from service.api.main import create_app
from service.cli import app as cli
from service.core.db.models import User
from service.core.db.session import session_scope
from service.domain.forget import request_forget
from service.domain.jobs import (
    BatchPolicy,
    claim_next_job,
    cut_batch,
    finish_consolidation,
    publish_and_complete,
)
from service.domain.receipts import GENESIS, ReceiptError, Signer, verify, verify_chain
from tests.service_support import (
    ADMIN_KEY,
    FORGET_KEY,
    auth,
    make_settings,
    postgres_database,
    prepare_database,
    small_dataset,
)

runner = CliRunner()


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "weights.bin").write_bytes(os.urandom(128))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two unlearning batches (users 3, 4, then 5), then a consolidation (user 6 open)."""
    root = tmp_path_factory.mktemp("receipts")
    with postgres_database() as url:
        prepare_database(url, small_dataset(users=20, items=30, per_user=8), _folder(root / "b1"))
        settings = make_settings(url, root / "data")
        signer = settings.signer()
        ids = {}
        for k, users in enumerate([("3", "4"), ("5",)]):
            with session_scope(url) as s:
                for u in users:
                    ids[u] = request_forget(s, u, salt=settings.salt(), actor="t")[0].request_id
            with session_scope(url) as s:
                job = cut_batch(s, BatchPolicy(1, 0, 10), force=True)
            with session_scope(url) as s:
                claim_next_job(s, "w", lease_seconds=60, max_attempts=3)
            adapter = _folder(root / f"a{k}")
            with session_scope(url) as s:
                publish_and_complete(
                    s, job.id, "w", base_model_id=1, parent_id=None, path=str(adapter),
                    checksum=folder_sha256(adapter), metrics={}, probes=[],
                    gate={"mia_auc_after": 0.51}, signer=signer,
                )  # fmt: skip
        with session_scope(url) as s:
            ids["6"] = request_forget(s, "6", salt=settings.salt(), actor="t")[0].request_id
        from service.domain.jobs import request_consolidation

        with session_scope(url) as s:
            request_consolidation(s, actor="t")
        with session_scope(url) as s:
            job = claim_next_job(s, "w", lease_seconds=60, max_attempts=3)
            user6 = s.scalar(select(User.id).where(User.external_id == "6"))
            finish_consolidation(
                s, job.id, "w", path=_folder(root / "b2"), recipe={},
                excluded_users={user6}, signer=signer,
            )  # fmt: skip
        with TestClient(create_app(settings)) as client:
            yield client, ids, signer, root


def test_the_chain_verifies_and_tells_the_story_of_each_request(world):
    client, ids, signer, _ = world
    key = client.get("/certificates/public-key").json()
    assert key == {"algorithm": "Ed25519", "public_key": signer.public_hex}
    chain = client.get("/certificates/chain", headers=auth(ADMIN_KEY)).json()
    bodies = verify_chain(chain["receipts"], key["public_key"])
    assert [b["seq"] for b in bodies] == list(range(1, 8))
    assert bodies[0]["prev_hash"] == GENESIS
    kinds = [(b["kind"], b["request_id"]) for b in bodies]
    assert kinds[:3] == [("unlearned", ids["3"]), ("unlearned", ids["4"]), ("unlearned", ids["5"])]
    assert ("consolidated", ids["6"]) in kinds
    # the earlier requests' receipts said the base still held them: the chain records the fix
    assert {r for k, r in kinds if k == "consolidated"} == set(ids.values())
    first = bodies[0]
    assert "still holds it until a consolidation" in first["statement"]
    assert first["adapter_sha256"] and first["base_sha256"] and first["gate"]["mia_auc_after"]

    cert = client.get(f"/forget/requests/{ids['3']}/certificate", headers=auth(FORGET_KEY))
    assert cert.status_code == 200
    receipts = cert.json()["receipts"]
    assert [verify(r, key["public_key"])["kind"] for r in receipts] == [
        "unlearned",
        "consolidated",
    ]
    assert client.get("/certificates/chain", headers=auth(FORGET_KEY)).status_code == 403


def test_verify_certificate_accepts_good_files_and_rejects_tampering(world, tmp_path):
    client, ids, signer, _ = world
    cert = client.get(f"/forget/requests/{ids['4']}/certificate", headers=auth(FORGET_KEY)).json()
    chain = client.get("/certificates/chain", headers=auth(ADMIN_KEY)).json()
    good_cert, good_chain = tmp_path / "cert.json", tmp_path / "chain.json"
    good_cert.write_text(json.dumps(cert))
    good_chain.write_text(json.dumps(chain))
    pinned = ["--public-key", signer.public_hex]
    for f in (good_cert, good_chain):
        result = runner.invoke(cli, ["verify-certificate", str(f), *pinned])
        assert result.exit_code == 0 and "valid:" in result.output, result.output

    # one character of one receipt changed: its hash and signature no longer hold
    tampered = json.loads(json.dumps(chain))
    r = tampered["receipts"][1]
    r["payload"] = r["payload"].replace('"interactions_deleted":', '"interactions_deleted":1')
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered))
    result = runner.invoke(cli, ["verify-certificate", str(bad), *pinned])
    assert result.exit_code == 1, result.output
    assert "INVALID" in result.output and "altered" in result.output

    # a receipt dropped from the middle: every signature holds, the chain does not
    dropped = json.loads(json.dumps(chain))
    del dropped["receipts"][2]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(dropped))
    result = runner.invoke(cli, ["verify-certificate", str(broken), *pinned])
    assert result.exit_code == 1 and "gap" in result.output

    # receipts signed by someone else's key
    other = Signer.from_seed_hex("11" * 32).public_hex
    result = runner.invoke(cli, ["verify-certificate", str(good_cert), "--public-key", other])
    assert result.exit_code == 1 and "signature" in result.output

    result = runner.invoke(cli, ["verify-certificate", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "missing.json" in result.output


def test_a_relinked_chain_is_caught_even_with_valid_signatures(world):
    """An insider holding the key re-signs receipt 3 to skip receipt 2: the sequence and the
    links give it away (and the published chain head would differ)."""
    client, _, signer, _ = world
    chain = client.get("/certificates/chain", headers=auth(ADMIN_KEY)).json()["receipts"]
    body = json.loads(chain[2]["payload"]) | {"prev_hash": chain[0]["hash"]}
    from service.domain.receipts import canonical, sha256_hex

    payload = canonical(body)
    forged = {"payload": payload, "hash": sha256_hex(payload), "signature": signer.sign(payload)}
    with pytest.raises(ReceiptError, match="gap|broken"):
        verify_chain([chain[0], forged], signer.public_hex)
    relinked = [chain[0], chain[1], forged]
    with pytest.raises(ReceiptError, match="broken"):
        verify_chain(relinked, signer.public_hex)
