"""The HTTP API and the CLI over a populated database: auth, bounds, bundles that verify."""

from __future__ import annotations

import asyncio
import base64
import warnings
from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.backend.service import load_or_create_log_key
from meterchain.cli.main import app as cli
from meterchain.contract import merkle
from meterchain.contract.bundle import verify_bundle
from meterchain.contract.note import NoteVerifier
from meterchain.contract.reading import MAX_SAFE_INT
from typer.testing import CliRunner

from tests.support.backend import Gateway, backend, close

with warnings.catch_warnings():  # starlette nags about httpx at import; the client works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ADMIN = {"Authorization": "Bearer s3cret"}


async def test_api_routes_auth_bounds_and_bundle(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    signer = load_or_create_log_key(tmp_path / "log.key", "test.example/log")
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600
    admin, ingest, sealer, store = await backend(tmp_path, gw, log_key=signer)
    await ingest.process([gw.message(s) for s in range(1, 6)])
    await sealer.seal_all()
    await ingest.process([gw.message(6)])  # stored, not sealed yet
    with TestClient(create_app(str(tmp_path / "mc.db"), "s3cret", signer.verifier)) as http:
        assert http.get("/healthz").json() == {"ok": True, "tree_size": 6}
        assert http.get("/api/v1/devices/gw-1/readings").status_code == 401
        rows = http.get("/api/v1/devices/gw-1/readings", headers=ADMIN).json()
        assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[5]["leaf_index"] is None
        assert base64.b64decode(rows[0]["message"]) == (await store.reading("gw-1", 1)).message
        window = http.get("/api/v1/devices/gw-1/readings", headers=ADMIN,
                          params={"start": rows[1]["end"], "end": rows[3]["end"]}).json()
        assert [r["seq"] for r in window] == [2, 3]
        for bad in ({"start": -1}, {"end": MAX_SAFE_INT + 1}, {"limit": 0}):
            answer = http.get("/api/v1/devices/gw-1/readings", headers=ADMIN, params=bad)
            assert answer.status_code == 422 and answer.json()["error"] == "invalid-request"
        bundle = http.get("/api/v1/devices/gw-1/readings/3/bundle", headers=ADMIN)
        log_key = NoteVerifier.parse(http.get("/api/v1/log/public-key").text)
        assert verify_bundle(bundle.text, log_key).reading.reading.seq == 3
        (tmp_path / "b.tlog-proof").write_text(bundle.text)
        unsealed = http.get("/api/v1/devices/gw-1/readings/6/bundle", headers=ADMIN)
        assert unsealed.status_code == 409 and "retry" in unsealed.json()["hint"]
        assert http.get("/api/v1/devices/gw-1/readings/7/bundle", headers=ADMIN).status_code == 404
        assert http.get("/api/v1/checkpoint").text.startswith("test.example/log\n6\n")
        proof = http.get("/api/v1/proofs/consistency", params={"old": 2, "new": 6}).json()
        with __import__("sqlite3").connect(tmp_path / "mc.db") as db:
            hashes = [r[0] for r in db.execute(
                "SELECT leaf_hash FROM leaves WHERE leaf_index IS NOT NULL ORDER BY leaf_index")]
        assert [base64.b64decode(h) for h in proof["proof"]] == merkle.consistency_proof(2, hashes)
        assert http.get("/api/v1/proofs/consistency", params={"old": 3, "new": 9}).status_code == 400
        batches = http.get("/api/v1/batches").json()["batches"]
        assert [(b["index"], b["first"], b["size"]) for b in batches] == [(0, 0, 6)]
        # Enrolment over the API, behind the admin token.
        other = Gateway("gw-2")
        body = {"device": "gw-2", "public_key": base64.b64encode(other.public_key).decode()}
        assert http.post("/api/v1/devices", json=body).status_code == 401
        created = http.post("/api/v1/devices", json=body, headers=ADMIN)
        assert created.status_code == 201 and created.json()["valid_from"] == 1
        again = http.post("/api/v1/devices", json=body, headers=ADMIN)
        assert again.status_code == 409 and again.json()["error"] == "registry"
        revoked = http.post("/api/v1/devices/gw-2/revoke", json={}, headers=ADMIN)
        assert revoked.status_code == 200 and revoked.json()["event"] == "revoke"
        assert http.post("/api/v1/devices", json={**body, "extra": 1}, headers=ADMIN).status_code == 422
        assert "meterchain_ingest" in http.get("/metrics").text
    runner = CliRunner()
    key_text = str(signer.verifier)
    assert runner.invoke(cli, ["verify", str(tmp_path / "b.tlog-proof"), "--log-key", key_text]).exit_code == 0
    await close(admin, ingest, sealer, store)


async def test_cli_enrol_and_audit(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    db = str(tmp_path / "mc.db")
    (tmp_path / "gw.der").write_bytes(gw.public_key)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return asyncio.to_thread(runner.invoke, cli, list(args))  # the CLI runs its own loop

    result = await invoke("backend", "enrol", "gw-1", "--public-key", str(tmp_path / "gw.der"), "--db", db)
    assert result.exit_code == 0, result.output
    assert "enrol gw-1" in result.output
    result = await invoke("backend", "enrol", "gw-1", "--public-key", str(tmp_path / "gw.der"), "--db", db)
    assert result.exit_code == 1
    admin, ingest, sealer, store = await backend(tmp_path)
    await ingest.process([gw.message(s) for s in range(1, 4)])
    await sealer.seal_all()
    (tmp_path / "log.pub").write_text(str(sealer.signer.verifier))
    ok = await invoke("audit", "--db", db, "--log-key", str(tmp_path / "log.pub"))
    assert ok.exit_code == 0 and "audit ok" in ok.output, ok.output
    await store.execute("UPDATE readings SET export_wh = 0 WHERE seq = 2")
    bad = await invoke("audit", "--db", db, "--log-key", str(tmp_path / "log.pub"))
    assert bad.exit_code == 1 and "reading gw-1#2" in bad.output
    await close(admin, ingest, sealer, store)
