"""The installer's agent commands: scan emulated buses, provision against a running backend."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from meterchain.agent.config import load_config
from meterchain.agent.scan import probe_timeout, propose_meters, scan_port
from meterchain.backend.api.app import create_app
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.provisioning.tokens import ProvisioningSettings, Scope, issue_token
from meterchain.backend.store import open_store
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator
from meterchain.cli.main import app as cli
from meterchain.contract.ack import readings_topic
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import key_id, load_signer
from meterchain.mqtt.broker import free_port
from typer.testing import CliRunner

from tests.support.cli import run, run_timed
from tests.support.humantime import assert_no_unix_seconds
from tests.support.provisioning import register_scopes
from tests.support.receipts import POLICY_2_OF_3

warnings.filterwarnings("ignore", category=DeprecationWarning)
MEMBERS = ("sdm630", 3, 9600, 630_003), ("sdm120", 7, 2400, 120_007)


async def test_scan_finds_both_models_at_their_own_ids_and_speeds() -> None:
    bus = ModbusBusEmulator([EmulatedMeter(m, i, b, serial_number=s) for m, i, b, s in MEMBERS])
    path = await bus.start()
    try:
        report = await scan_port(path, baudrates=(9600, 2400), ids=range(2, 9))
    finally:
        await bus.stop()
    found = sorted((m.model, m.modbus_id, m.baudrate, m.serial) for m in report.found)
    assert found == [("sdm120", 7, 2400, "120007"), ("sdm630", 3, 9600, "630003")]
    assert not report.garbled and not report.errors
    assert all(m.import_wh > 0 for m in report.found)
    proposal = propose_meters(report.found)
    assert len(proposal.meters) == 1 and "2400 baud" in proposal.advice[0]  # one bus, one speed


@pytest.mark.timeout(240)  # three CLI processes; each imports for 10 s or more under load
async def test_scan_command_on_one_speed_bus_and_a_silent_bus(tmp_path: Path) -> None:
    """The CLI's exact output; a silent bus is reported empty within the announced bound."""
    meters = [EmulatedMeter("sdm630", 2, 9600, serial_number=1), EmulatedMeter("sdm120", 5, 9600,
                                                                              serial_number=2)]
    async with ModbusBusEmulator(meters) as bus:
        code, out = await run("agent", "scan", bus.path, "--protocol", "modbus", "--baud", "9600",
                               "--ids", "1-6", "--out", str(tmp_path / "meters.toml"))
    assert code == 0, out
    assert "found sdm630 id 2 at 9600 baud: serial 1" in out
    assert "found sdm120 id 5 at 9600 baud: serial 2" in out
    assert (tmp_path / "meters.toml").read_text().count("[[meters]]") == 2
    silent = EmulatedMeter("sdm630", 1, 9600)
    silent.faults.silent = True
    async with ModbusBusEmulator([silent]) as bus:
        code, out, took = await run_timed("agent", "scan", bus.path, "--protocol", "modbus",
                                          "--baud", "9600", "--baud", "2400", "--ids", "1-4",
                                          after="probing takes at most")
    bound = 4 * (probe_timeout(9600) + probe_timeout(2400))
    assert code == 3 and "no meter answered" in out and "A/B swapped" in out
    # From the line announcing the bound to the exit: the interpreter's start-up is not the scan's.
    assert took < bound + 6, f"the silent bus's scan took {took:.1f} s, announced {bound:.1f} s"
    code, out = await run("agent", "scan", str(tmp_path / "ttyNONE"), "--ids", "1")
    assert code == 1 and "wrong port?" in out


CONTROL = NoteSigner.generate("test.example/control")


@pytest.fixture
def running_backend(tmp_path: Path) -> Iterator[tuple[str, Path, NoteSigner]]:
    """The backend's API on a free loopback port (uvicorn in a thread)."""
    db = tmp_path / "mc.db"
    asyncio.run(_create(db))
    register_scopes(db)
    log_key = NoteSigner.generate("test.example/log")
    port = free_port()
    settings = ProvisioningSettings(broker_url="mqtt://127.0.0.1:1883",
                                    control_key=str(CONTROL.verifier),
                                    witness_policy=POLICY_2_OF_3.to_text())
    server = uvicorn.Server(uvicorn.Config(create_app(str(db), "s3cret", log_key.verifier, settings),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", db, log_key
    finally:
        server.should_exit = True
        thread.join(10)


async def _create(db: Path) -> None:
    await (await open_store(db)).close()


def _token(db: Path, scope: str = "utility:swx") -> str:
    async def issue() -> str:
        store = await open_store(db)
        try:
            return (await issue_token(store, Scope.parse(scope), int(time.time()))).token
        finally:
            await store.close()

    return asyncio.run(issue())


def _accepted(db: Path, config_path: Path, seq: int) -> dict[str, int]:
    """Sign a reading with the provisioned config's key and device id; run it through ingest."""
    config = load_config(config_path)
    signer = load_signer(config.key_path.read_bytes())
    reading = Reading(device=config.device_id, key_id=key_id(signer.public_key_der), seq=seq,
                      meter="630003", start=900 * seq, end=900 * (seq + 1),
                      registers={IMPORT_OBIS: Register(10 * seq, "Wh"),
                                 EXPORT_OBIS: Register(0, "Wh")})
    message = sign_reading(reading, signer).to_cbor()

    async def ingest() -> dict[str, int]:
        ingest = Ingest(await open_store(db))
        try:
            report = await ingest.process([(readings_topic(config.device_id), message)])
            return {"stored": report.stored, **report.rejected}
        finally:
            ingest.close()
            await ingest.store.close()

    return asyncio.run(ingest())


def test_provision_command_against_a_running_backend(running_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, db, log_key = running_backend
    gateway = tmp_path / "gateway"
    config = gateway / "agent.toml"
    meters = tmp_path / "meters.toml"
    meters.write_text('[[meters]]\nname = "sdm630-3"\nmodel = "sdm630"\nport = "/dev/ttyUSB0"\n'
                      "baudrate = 9600\nmodbus_id = 3\n")
    runner = CliRunner()
    common = ["agent", "provision", "--backend", url, "--config", str(config),
              "--identity", "machine-0001-abcdef"]
    down = runner.invoke(cli, [*common[:3], f"http://127.0.0.1:{free_port()}", *common[4:],
                               "--token", "mct_x"])
    assert down.exit_code == 1 and "cannot reach the backend" in down.output
    assert "network" in down.output and not config.exists()
    token = _token(db)
    done = runner.invoke(cli, [*common, "--token", token, "--meters", str(meters)])
    assert done.exit_code == 0, done.output
    assert "provisioned: device gw-" in done.output and "(enrol," in done.output
    assert config.stat().st_mode & 0o777 == 0o600
    assert (gateway / "device-key.pem").stat().st_mode & 0o777 == 0o600
    loaded = load_config(config)
    assert loaded.meters[0].modbus_id == 3 and loaded.broker.address.username == loaded.device_id
    record = json.loads((gateway / "provisioned.json").read_text())
    assert record["log_public_key"] == str(log_key.verifier) and record["scope"] == "utility:swx"
    # The gateway verifies every ack with the backend's control key (issue 14).
    assert loaded.control_key == record["control_key"] == str(CONTROL.verifier)
    # ...and every receipt with the log key and the witness policy (issue 17).
    assert loaded.log_key == str(log_key.verifier)
    assert loaded.witness_policy == record["witness_policy"] == POLICY_2_OF_3.to_text()
    assert _accepted(db, config, 1) == {"stored": 1}
    first_key = (gateway / "device-key.pem").read_bytes()
    reused = runner.invoke(cli, [*common, "--token", token])
    assert reused.exit_code == 1 and "already used" in reused.output and "new one" in reused.output
    assert_no_unix_seconds(reused.output, "meterchain agent provision (token used)")
    assert (gateway / "device-key.pem").read_bytes() == first_key  # refused: nothing changed
    wrong = runner.invoke(cli, [*common, "--token", _token(db, "community:sunny-side")])
    assert wrong.exit_code == 1 and "belongs to utility:swx" in wrong.output
    late = _token(db)
    import sqlite3

    with sqlite3.connect(db) as rows:
        rows.execute("UPDATE installer_tokens SET expires = 1000 WHERE used_at IS NULL")
    expired = runner.invoke(cli, [*common, "--token", late])
    assert expired.exit_code == 1 and "expired" in expired.output
    assert_no_unix_seconds(expired.output, "meterchain agent provision (token expired)")
    # provisioning again rotates the key; readings of the old key below the point stay valid
    again = runner.invoke(cli, [*common, "--token", _token(db)])
    assert again.exit_code == 0 and "(rotate," in again.output and "from sequence 2" in again.output
    assert (gateway / "device-key.pem").read_bytes() != first_key
    assert load_config(config).meters[0].modbus_id == 3  # the meters were kept
    assert _accepted(db, config, 2) == {"stored": 1}
