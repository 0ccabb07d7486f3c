"""Commissioning on the backend: installer tokens, provisioning, rotation, broker logins."""

from __future__ import annotations

import base64
import getpass
import socket
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from meterchain.backend.api.app import create_app
from meterchain.backend.provisioning.tokens import (
    ProvisioningError,
    ProvisioningSettings,
    ProvisionRequest,
    Scope,
    device_id_for,
    issue_token,
    mosquitto_password_hash,
    provision,
    write_passwd_line,
)
from meterchain.cli.main import app as cli
from meterchain.contract import merkle
from meterchain.contract.checkpoint import open_checkpoint
from meterchain.contract.humantime import human_time
from meterchain.contract.note import NoteSigner
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.mqtt.broker import find_mosquitto, free_port
from typer.testing import CliRunner

from tests.support.backend import Gateway, backend, close
from tests.support.humantime import assert_no_unix_seconds
from tests.support.provisioning import register_scopes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ADMIN = {"Authorization": "Bearer s3cret"}
SETTINGS = ProvisioningSettings(broker_url="mqtts://broker.example:8883",
                                public_url="https://backend.example")
IDENTITY = "0123456789abcdef0123456789abcdef"


def _key_b64(signer) -> str:  # type: ignore[no-untyped-def]
    return base64.b64encode(signer.public_key_der).decode()


def _app(tmp_path: Path, signer: NoteSigner, settings: ProvisioningSettings = SETTINGS):  # type: ignore[no-untyped-def]
    return TestClient(create_app(str(tmp_path / "mc.db"), "s3cret", signer.verifier, settings))


async def test_token_issue_provision_and_every_refusal(tmp_path: Path) -> None:
    log_key = NoteSigner.generate("test.example/log")
    admin, ingest, sealer, store = await backend(tmp_path, log_key=log_key)
    register_scopes(tmp_path / "mc.db")
    gateway_key = load_signer(generate_private_key_pem())
    with _app(tmp_path, log_key) as http:
        noauth = http.post("/api/v1/installer-tokens", json={"scope": "utility:swx"})
        assert noauth.status_code == 401, noauth.text
        bad = http.post("/api/v1/installer-tokens", headers=ADMIN, json={"scope": "town:x"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid-scope"
        unknown = http.post("/api/v1/installer-tokens", headers=ADMIN, json={"scope": "utility:nope"})
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown-scope"
        issued = http.post("/api/v1/installer-tokens", headers=ADMIN,
                           json={"scope": "utility:swx", "note": "job 17"}).json()
        assert issued["token"].startswith("mct_") and issued["scope"] == "utility:swx"
        assert (
            issued["command"]
            == f"meterchain agent provision --backend https://backend.example --token {issued['token']}"
        )
        assert issued["qr_svg"].startswith("<svg")
        body = {"token": issued["token"], "public_key": _key_b64(gateway_key), "identity": IDENTITY}
        unknown = http.post("/api/v1/provision", json=body | {"token": "mct_nope"})
        assert unknown.status_code == 401 and unknown.json()["error"] == "unknown-token"
        done = http.post("/api/v1/provision", json=body)
        assert done.status_code == 201, done.text
        answer = done.json()
        assert answer["device"] == device_id_for(IDENTITY) and answer["event"] == "enrol"
        assert answer["valid_from"] == 1 and answer["scope"] == "utility:swx"
        assert answer["broker_url"] == SETTINGS.broker_url
        assert answer["broker_username"] == answer["device"] and len(answer["broker_password"]) >= 30
        assert answer["log_public_key"] == str(log_key.verifier)
        reused = http.post("/api/v1/provision", json=body)
        assert reused.status_code == 401 and reused.json()["error"] == "token-used"
        assert answer["device"] in reused.json()["detail"] and "new one" in reused.json()["hint"]
        assert_no_unix_seconds(reused.json()["detail"], "the token-used error")
        # expired: a token past its lifetime
        late = http.post("/api/v1/installer-tokens", headers=ADMIN,
                         json={"scope": "utility:swx"}).json()["token"]
        with sqlite3.connect(tmp_path / "mc.db") as db:
            db.execute("UPDATE installer_tokens SET expires = 1000 WHERE used_at IS NULL")
        expired = http.post("/api/v1/provision", json=body | {"token": late})
        assert expired.status_code == 401 and expired.json()["error"] == "token-expired"
        assert "clock" in expired.json()["hint"]
        assert f"expired at {human_time(1000)}" in expired.json()["detail"]
        # wrong scope: the same gateway, a token of another utility
        other = http.post("/api/v1/installer-tokens", headers=ADMIN,
                          json={"scope": "community:sunny-side"}).json()["token"]
        wrong = http.post("/api/v1/provision", json=body | {"token": other})
        assert wrong.status_code == 403 and wrong.json()["error"] == "wrong-scope"
        assert "utility:swx" in wrong.json()["hint"]
        # the refused attempt did not burn that token: a new gateway of that community may use it
        fresh = load_signer(generate_private_key_pem())
        second = http.post("/api/v1/provision", json={"token": other, "public_key": _key_b64(fresh),
                                                      "identity": "another-gateway-0001"})
        assert second.status_code == 201 and second.json()["scope"] == "community:sunny-side"
    with sqlite3.connect(tmp_path / "mc.db") as db:
        hashes = db.execute("SELECT broker_password_hash FROM gateways").fetchall()
        tokens = db.execute("SELECT token_hash FROM installer_tokens").fetchall()
    assert all(h[0].startswith("$7$101$") for h in hashes)  # the password itself is nowhere
    assert issued["token"].encode() not in b"".join(t[0] for t in tokens)
    await close(admin, ingest, sealer, store)


async def test_reprovisioning_rotates_and_a_revoked_key_is_refused(tmp_path: Path) -> None:
    """Old readings keep verifying after a rotation; the old key cannot sign new ones; a
    revocation stops the new key too; the inclusion route proves a reading to its holder."""
    from meterchain.backend.devices.registry import revoke
    from meterchain.backend.log.audit import audit as run_audit

    log_key = NoteSigner.generate("test.example/log")
    admin, ingest, sealer, store = await backend(tmp_path, log_key=log_key)
    register_scopes(tmp_path / "mc.db")
    first = load_signer(generate_private_key_pem())
    token = (await issue_token(admin, Scope("utility", "swx"), int(time.time()))).token
    done = await provision(admin, ProvisionRequest(token, first.public_key_der, IDENTITY),
                           int(time.time()), SETTINGS)
    gw = Gateway(done.device)
    report = await ingest.process([gw.message(s, signer=first) for s in (1, 2, 3)])
    assert report.stored == 3
    second = load_signer(generate_private_key_pem())
    token = (await issue_token(admin, Scope("utility", "swx"), int(time.time()))).token
    again = await provision(admin, ProvisionRequest(token, second.public_key_der, IDENTITY,
                                                    next_seq=5), int(time.time()), SETTINGS)
    assert (again.device, again.leaf.event.value, again.leaf.valid_from) == (done.device, "rotate", 5)
    assert again.broker_password != done.broker_password
    report = await ingest.process([gw.message(4, signer=first), gw.message(5, signer=second),
                                   gw.message(6, signer=first)])
    assert report.stored == 2 and report.rejected == {"key-id": 1}  # 6: old key past the point
    await revoke(admin, done.device, int(time.time()))  # from seq 6 on
    report = await ingest.process([gw.message(7, signer=second)])
    assert report.rejected == {"key-validity": 1}
    await sealer.seal_all()
    with _app(tmp_path, log_key) as http:
        message = (await store.reading(done.device, 2)).message  # ECDSA: as sent, not re-signed
        leaf = merkle.leaf_hash(message).hex()
        url = f"/api/v1/devices/{done.device}/readings/2/inclusion"
        assert http.get(url, params={"leaf_hash": "00" * 32}).status_code == 404
        found = http.get(url, params={"leaf_hash": leaf}).json()
        assert "checkpoint" in found, found
        checkpoint = open_checkpoint(found["checkpoint"], log_key.verifier)
        merkle.verify_inclusion(found["leaf_index"], checkpoint.size, bytes.fromhex(leaf),
                                [base64.b64decode(p) for p in found["proof"]], checkpoint.root)
    # the audit re-verifies every stored reading with the key valid for its seq
    report = await run_audit(store, log_key.verifier)
    assert report.ok and report.readings == 5, report.findings  # 1-4 old key, 5 new
    # a revoked gateway cannot be re-provisioned under its id
    token = (await issue_token(admin, Scope("utility", "swx"), int(time.time()))).token
    with pytest.raises(ProvisioningError) as refused:
        await provision(admin, ProvisionRequest(token, first.public_key_der, IDENTITY, next_seq=9),
                        int(time.time()), SETTINGS)
    assert refused.value.check == "registry" and "new device id" in refused.value.hint
    await close(admin, ingest, sealer, store)


def test_backend_token_command_prints_token_and_qr(tmp_path: Path) -> None:
    db = str(tmp_path / "mc.db")
    assert CliRunner().invoke(cli, ["backend", "token", "--scope", "community:sunny-side",
                                    "--db", db]).exit_code == 1  # not registered yet
    register_scopes(tmp_path / "mc.db")
    result = CliRunner().invoke(cli, ["backend", "token", "--scope", "community:sunny-side",
                                      "--db", db, "--qr", "--svg", str(tmp_path / "t.svg"),
                                      "--public-url", "https://b.example/"])
    assert result.exit_code == 0, result.output
    token = result.output.split("token: ")[1].split()[0]
    assert f"--backend https://b.example --token {token}" in result.output
    assert_no_unix_seconds(result.output, "meterchain token")
    assert "█" in result.output and (tmp_path / "t.svg").read_text().startswith("<svg")
    with sqlite3.connect(db) as rows:
        assert rows.execute("SELECT scope_kind, scope_id FROM installer_tokens").fetchall() == [
            ("community", "sunny-side")]
    bad = CliRunner().invoke(cli, ["backend", "token", "--scope", "utility", "--db", db])
    assert bad.exit_code == 1


def test_passwd_line_replaces_only_that_user(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("meterchain-backend:$7$101$abc$def\ngw-1:$7$101$old$old\n")
    passwd.chmod(0o640)
    write_passwd_line(passwd, "gw-1", "$7$101$new$new")
    write_passwd_line(passwd, "gw-2", "$7$101$two$two")
    assert passwd.read_text().splitlines() == [
        "meterchain-backend:$7$101$abc$def", "gw-1:$7$101$new$new", "gw-2:$7$101$two$two"]
    assert passwd.stat().st_mode & 0o777 == 0o640


def test_mosquitto_accepts_the_generated_hash(tmp_path: Path) -> None:
    """The hash we store is one Mosquitto itself checks: the password logs in, another does not."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed")
    passwd, port = tmp_path / "passwd", free_port()
    write_passwd_line(passwd, "gw-1", mosquitto_password_hash("right-password"))
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                    f"user {getpass.getuser()}\n")  # as root, Mosquitto would drop to 'mosquitto'

    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)

        def login(password: str) -> int:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.username_pw_set("gw-1", password)
            codes: list[int] = []
            client.on_connect = lambda c, u, f, rc, p=None: codes.append(rc.value)
            client.connect("127.0.0.1", port)
            deadline = time.monotonic() + 5
            while not codes and time.monotonic() < deadline:
                client.loop(0.05)
            client.disconnect()
            return codes[0]

        assert login("right-password") == 0
        assert login("wrong-password") != 0
    finally:
        broker.terminate()
        broker.wait(5)
