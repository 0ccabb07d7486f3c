"""Commissioning end to end: a running backend and broker, an emulated meter, provision, check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from meterchain.agent.check import format_report, run_check
from meterchain.agent.config import load_config
from meterchain.agent.provision import FileKeyStore, provision
from meterchain.agent.service import load_device_key
from meterchain.backend.broker import RunningBroker, free_port
from meterchain.backend.config import BackendConfig
from meterchain.backend.provisioning import Scope, issue_token
from meterchain.backend.service import serve
from meterchain.backend.store import open_store
from meterchain.bridge.modbus.emulator import ModbusMeterEmulator
from meterchain.contract.reading import ClockSync
from test_installer_backend import register_scopes


async def test_provision_then_check_logs_a_reading(tmp_path: Path, broker: RunningBroker) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
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
    meter = ModbusMeterEmulator("sdm630", 4, 9600, serial_number=77_001, wire_delay=False)
    try:
        await asyncio.wait_for(ready.wait(), 20)
        path = await meter.start()
        store = await open_store(db)
        token = (await issue_token(store, Scope("utility", "swx"), int(time.time()))).token
        await store.close()
        gateway = tmp_path / "gateway"
        meters = tmp_path / "meters.toml"
        meters.write_text(f'[[meters]]\nname = "house"\nmodel = "sdm630"\nport = "{path}"\n'
                          "baudrate = 9600\nmodbus_id = 4\ntimeout_seconds = 0.5\n")
        result = await asyncio.to_thread(
            provision, backend_url=f"http://127.0.0.1:{port}", token=token,
            config_path=gateway / "agent.toml", keys=FileKeyStore(gateway / "device-key.pem"),
            key_path=gateway / "device-key.pem", outbox_path=gateway / "outbox.sqlite",
            identity="gateway-under-test-01", meters_file=meters)
        settings = load_config(gateway / "agent.toml")
        record = json.loads(result.record_path.read_text())
        report = await run_check(settings, load_device_key(settings.key_path), record=record,
                                 timeout=20, clock_sync=lambda: ClockSync.SYNCED)
        text = format_report(report)
        assert report.ok, text
        assert report.meters[0]["serial"] == "77001" and report.logged_at is not None
        assert f"logged at position {report.logged_at}" in text
        assert report.key_fingerprint == result.key_id and report.broker_latency_ms is not None
        # a meter that does not answer: the report names the likely causes
        meter.faults.silent = True
        report = await run_check(settings, load_device_key(settings.key_path), record=record,
                                 timeout=5, clock_sync=lambda: ClockSync.UNSYNCED)
        text = format_report(report)
        assert not report.ok and "A/B swapped" in text and "clock unsynchronised" in text
    finally:
        await meter.stop()
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend, 20)
