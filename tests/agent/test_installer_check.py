"""Commissioning end to end: a running backend and broker, an emulated meter, provision, check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from meterchain.agent.check import CheckReport, format_report, run_check
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import AgentConfig, load_config
from meterchain.agent.provision import FileKeyStore, provision
from meterchain.agent.service import load_device_key
from meterchain.backend.config import BackendConfig
from meterchain.backend.provisioning.tokens import Scope, issue_token
from meterchain.backend.service import serve
from meterchain.backend.store import open_store
from meterchain.bridge.dlms import (
    LOAD_PROFILE_OBIS,
    BusMeter,
    DlmsBusEmulator,
    DlmsMeterEmulator,
    EmulatedDlmsMeter,
    HdlcAddress,
)
from meterchain.bridge.dlms.emulator import default_settings
from meterchain.bridge.modbus.emulator import ModbusMeterEmulator
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import generate_private_key_pem
from meterchain.mqtt.broker import RunningBroker, free_port

from tests.support.provisioning import register_scopes

PERIOD = 900


@contextlib.asynccontextmanager
async def provisioned(tmp_path: Path, broker: RunningBroker,
                      meters_toml: str) -> AsyncIterator[tuple[AgentConfig, dict[str, object]]]:
    """A running backend, and a gateway provisioned against it with these [[meters]]."""
    db = tmp_path / "mc.db"
    await (await open_store(db)).close()
    register_scopes(db)
    port = free_port()
    config = BackendConfig(db=str(db), broker=broker.url, http_port=port,
                           log_key=str(tmp_path / "log.key"), origin="test.example/log",
                           admin_token="s3cret", seal_interval=0.2,
                           gateway_broker_url=broker.url)
    stop, ready = asyncio.Event(), asyncio.Event()
    backend = asyncio.create_task(serve(config, stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 20)
        store = await open_store(db)
        token = (await issue_token(store, Scope("utility", "swx"), int(time.time()))).token
        await store.close()
        gateway = tmp_path / "gateway"
        meters = tmp_path / "meters.toml"
        meters.write_text(meters_toml)
        result = await asyncio.to_thread(
            provision, backend_url=f"http://127.0.0.1:{port}", token=token,
            config_path=gateway / "agent.toml", keys=FileKeyStore(gateway / "device-key.pem"),
            key_path=gateway / "device-key.pem", outbox_path=gateway / "outbox.sqlite",
            identity="gateway-under-test-01", meters_file=meters)
        record = json.loads(result.record_path.read_text())
        assert record["key_id"] == result.key_id
        yield load_config(gateway / "agent.toml"), record
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend, 20)


async def _check(settings: AgentConfig, record: dict[str, object] | None, timeout: float,
                 sync: ClockSync = ClockSync.SYNCED) -> tuple[CheckReport, str]:
    report = await run_check(settings, load_device_key(settings.key_path), record=record,
                             timeout=timeout, clock_sync=lambda: sync)
    return report, format_report(report)


async def test_provision_then_check_logs_a_reading(tmp_path: Path, broker: RunningBroker) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    meter = ModbusMeterEmulator("sdm630", 4, 9600, serial_number=77_001, wire_delay=False)
    path = await meter.start()
    try:
        async with provisioned(tmp_path, broker, (
                f'[[meters]]\nname = "house"\nmodel = "sdm630"\nport = "{path}"\n'
                "baudrate = 9600\nmodbus_id = 4\ntimeout_seconds = 0.5\n")) as (settings, record):
            report, text = await _check(settings, record, 20)
            assert report.ok, text
            assert report.meters[0]["serial"] == "77001" and report.logged_at is not None
            assert f"logged at position {report.logged_at}" in text
            assert report.key_fingerprint == record["key_id"]
            assert report.broker_latency_ms is not None
            assert "the SDM meters have no clock of their own" in text
            # a meter that does not answer: the report names the likely causes
            meter.faults.silent = True
            report, text = await _check(settings, record, 5, ClockSync.UNSYNCED)
            assert not report.ok and "A/B swapped" in text and "clock unsynchronised" in text
    finally:
        await meter.stop()


async def test_check_reads_a_dlms_meter_and_its_clock_drift(
    tmp_path: Path, broker: RunningBroker
) -> None:
    """A DLMS meter: serial, values, drift within the threshold, its profile signed and logged;
    then a clock two minutes fast fails the meter's clock step with the fix."""
    start = int(time.time()) // PERIOD * PERIOD - 3 * PERIOD  # four entries in the profile
    emulator = DlmsMeterEmulator(EmulatedDlmsMeter(serial_number="MC20269999", start=start))
    path = await emulator.start()
    try:
        async with provisioned(tmp_path, broker, (
                f'[[meters]]\nname = "main"\nmodel = "dlms"\nport = "{path}"\n'
                "baudrate = 9600\ntimeout_seconds = 0.5\nbackfill_days = 1\n")) as (settings,
                                                                                   record):
            before = int(time.time())
            report, text = await _check(settings, record, 20)
            after = int(time.time())
            assert report.ok, text
            (meter,) = report.meters
            assert meter["serial"] == "MC20269999" and meter["capture_period"] == PERIOD
            live = emulator.meter.import_wh
            assert live(before) <= meter["import_wh"] <= live(after)  # type: ignore[operator]
            assert abs(float(meter["clock_drift_seconds"])) < 3  # type: ignore[arg-type]
            assert "[ok] meter clock main: drift" in text and "within the 30 s threshold" in text
            assert "SDM meters" not in text and report.logged_at is not None
            emulator.faults.clock_offset_minutes = 2
            report, text = await _check(settings, record, 5)
            step = next(s for s in report.steps if s.name == "meter clock main")
            assert not step.ok and "beyond the 30 s threshold" in step.detail
            # the emulated clock ticks in whole seconds: 120 s fast reads as 119-121 s
            assert re.match(r"meter clock is 1(19|20|21) s off: set it with the utility's",
                            step.fix), step.fix
            assert 118 < float(report.meters[0]["clock_drift_seconds"]) < 122  # type: ignore[arg-type]
    finally:
        await emulator.stop()


def _dlms_config(tmp_path: Path, port: str, extra: str = "") -> AgentConfig:
    write_private_key(tmp_path / "device.key", generate_private_key_pem(), force=True)
    path = tmp_path / "agent.toml"
    path.write_text(f"""
device_id = "gw-check-1"
key_path = "device.key"
backend_url = "http://127.0.0.1:9"
outbox_path = "outbox.sqlite"

[broker]
url = "mqtt://127.0.0.1:9"

[[meters]]
name = "main"
model = "dlms"
port = "{port}"
baudrate = 9600
timeout_seconds = 0.2
max_retries = 0
{extra}
""")
    return load_config(path)


@pytest.mark.timeout(60)
async def test_every_dlms_failure_names_its_cause_and_fix(tmp_path: Path) -> None:
    async with DlmsMeterEmulator() as emulator:
        assert emulator.path is not None

        async def meter_fix(extra: str = "") -> str:
            report, text = await _check(_dlms_config(tmp_path, emulator.path, extra), None, 1)
            step = next(s for s in report.steps if s.name == "meter main")
            assert not report.ok and not step.ok, text
            assert not any(s.name in ("publish", "meter clock main") for s in report.steps)
            return step.fix

        emulator.faults.silent = True
        assert (await meter_fix()).startswith("no answer at HDLC address 1 at 9600 baud: wrong "
                                              "server_address, physical_address or baudrate")
        emulator.faults.silent = False
        assert "no answer at HDLC address 1/17 at 9600 baud" in await meter_fix(
            "physical_address = 17\n")
        emulator.faults.corrupt_crc = True
        assert (await meter_fix()).startswith("garbled frames (bad check sequence): wrong baud")
        emulator.faults.corrupt_crc = False
        assert (await meter_fix('client_address = 1\npassword = "wrong"\n')).startswith(
            "association refused: wrong client_address (1) or password")
        emulator.faults.unavailable.add(LOAD_PROFILE_OBIS)
        assert "the object does not exist (check profile_obis)" in await meter_fix()
    report, _ = await _check(_dlms_config(tmp_path, str(tmp_path / "ttyNONE")), None, 1)
    assert report.steps[1].fix.startswith("wrong port, or no permission")


@pytest.mark.timeout(60)
async def test_check_reads_every_dlms_meter_of_a_multi_drop_line(tmp_path: Path) -> None:
    start = int(time.time()) // PERIOD * PERIOD - 3 * PERIOD
    line = [BusMeter(EmulatedDlmsMeter(serial_number=serial, start=start),
                     default_settings(address=HdlcAddress(1, lower)), 9600)
            for serial, lower in (("MC20261717", 17), ("MC20262020", 20))]
    async with DlmsBusEmulator(line) as bus:
        assert bus.path is not None
        second = (f'[[meters]]\nname = "second"\nmodel = "dlms"\nport = "{bus.path}"\n'
                  "baudrate = 9600\ntimeout_seconds = 0.2\nphysical_address = 20\n")
        settings = _dlms_config(tmp_path, bus.path, f"physical_address = 17\n\n{second}")
        report, text = await _check(settings, None, 1)
    assert [(m["name"], m["ok"], m.get("serial")) for m in report.meters] == [
        ("main", True, "MC20261717"), ("second", True, "MC20262020")], text
    assert "[ok] meter main: serial MC20261717" in text
    assert "[ok] meter second: serial MC20262020" in text
