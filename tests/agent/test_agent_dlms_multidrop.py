"""Several DLMS meters on one serial line: the agent's pollers take turns, each reading stored."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from meterchain.agent.backfill import latest_capture
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import parse_config
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.profile_poller import dlms_pollers
from meterchain.bridge.dlms import BusMeter, DlmsBusEmulator, EmulatedDlmsMeter, HdlcAddress
from meterchain.bridge.dlms.emulator import default_settings
from meterchain.contract.message import parse_message
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import generate_private_key_pem, load_signer

pytestmark = pytest.mark.timeout(60)
DEVICE = "gw-multidrop-1"
PERIOD = 900
HISTORY = 12  # profile entries before the newest one


def _station(serial: str, lower: int, base_import_wh: int) -> BusMeter:
    start = latest_capture(time.time(), PERIOD) - HISTORY * PERIOD
    meter = EmulatedDlmsMeter(serial_number=serial, start=start, base_import_wh=base_import_wh)
    return BusMeter(meter, default_settings(address=HdlcAddress(1, lower)), 9600)


def _config(port: str) -> dict[str, object]:
    meter = {"model": "dlms", "port": port, "baudrate": 9600, "timeout_seconds": 0.5,
             "backfill_days": 1, "backfill_batch_intervals": 4}
    return {
        "device_id": DEVICE, "key_path": "device.key", "backend_url": "http://127.0.0.1:8000",
        "broker": {"url": "mqtt://127.0.0.1"},
        "meters": [{**meter, "name": "flat-a", "physical_address": 17},
                   {**meter, "name": "flat-b", "physical_address": 20}],
    }


async def test_two_meters_on_one_line_are_read_in_turn_each_under_its_serial(
    tmp_path: Path,
) -> None:
    """Both pollers run at once on one pty; several batches each, so without the port's lock
    their frames would interleave on the line and the sessions fail."""
    line = [_station("MC20261717", 17, 1_000_000), _station("MC20262020", 20, 5_000_000)]
    async with DlmsBusEmulator(line) as bus:
        assert bus.path is not None
        config = parse_config(_config(bus.path), tmp_path / "agent.toml")
        signer = load_signer(generate_private_key_pem())
        async with await Outbox.open(tmp_path / "outbox.sqlite", DEVICE) as outbox:
            pollers = dlms_pollers(
                config.meters, device=DEVICE, signer=signer, outbox=outbox, clock=SystemClock(),
                interval=PERIOD, metrics=AgentMetrics(), clock_sync=lambda: ClockSync.SYNCED,
                on_cycle=lambda: None,
            )
            assert len({id(p.source.port_lock) for p in pollers}) == 1  # type: ignore[attr-defined]
            newest = latest_capture(time.time(), PERIOD)
            await asyncio.gather(*(poller.poll_once() for poller in pollers))
            assert [p.failures for p in pollers] == [0, 0]
            stored = await outbox.readings()
            progress = await outbox.meter_progress()
    for station in line:
        meter = station.meter
        assert progress[meter.serial_number] >= newest
        mine = [parse_message(r.message).reading for r in stored
                if r.meter == meter.serial_number]
        ends = [reading.end for reading in mine]
        assert ends == list(range(meter.start, progress[meter.serial_number] + 1, PERIOD))
        for reading in mine:
            assert reading.meter == meter.serial_number
            _, cumulative, _ = meter.profile_row((reading.end - meter.start) // PERIOD)
            assert (reading.import_wh, reading.export_wh) == (cumulative, 0)
    assert len(stored) == len({(r.meter, r.interval_end) for r in stored})  # each once
