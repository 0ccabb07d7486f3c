"""Shared by several test modules (moved here from test_agent_dlms.py, so no test imports another)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from meterchain.agent.backfill import latest_capture
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import AgentConfig, load_config
from meterchain.agent.service import Agent
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import SqliteStore, open_store
from meterchain.bridge.dlms import DlmsMeterEmulator, EmulatedDlmsMeter
from meterchain.contract.message import parse_message
from meterchain.contract.reading import ClockSync, Reading
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent import FAST_BACKOFF, AcceleratedClock, running


@dataclass
class Site:
    clock: AcceleratedClock
    meter: EmulatedDlmsMeter
    config: AgentConfig
    spki: bytes
    admin: SqliteStore
    ingest: Ingest

    def agent(self) -> Agent:
        return Agent(
            self.config, clock=self.clock, backoff=FAST_BACKOFF, clock_sync=lambda: ClockSync.SYNCED
        )

    def latest(self) -> int:
        return latest_capture(self.clock.now(), PERIOD)

    async def progress(self, agent: Agent) -> int:
        """The newest interval the running agent has signed for the meter."""
        if agent.outbox is None:
            return 0
        return await agent.outbox.last_end(self.meter.serial_number) or 0

    async def stored(self) -> list[Reading]:
        readings = []
        seq = 1
        while (row := await self.admin.reading(DEVICE, seq)) is not None:
            readings.append(parse_message(row.message).reading)
            seq += 1
        return readings


@contextlib.asynccontextmanager
async def site(tmp_path: Path, broker: RunningBroker) -> AsyncIterator[Site]:
    """A meter with some history on a pty, the agent's config for it, and the real ingest."""
    origin = 1_767_225_600 + 40 * PERIOD + PERIOD // 2  # mid-interval
    clock = AcceleratedClock(origin, SCALE)
    first_entry = latest_capture(origin, PERIOD) - (HISTORY - 1) * PERIOD
    meter = EmulatedDlmsMeter(start=first_entry)
    emulator = DlmsMeterEmulator(meter, clock=clock.now)
    port = await emulator.start()
    # Accelerated time widens everything by 900×: 30 emulated seconds are 33 ms of event loop.
    extra = (
        "timeout_seconds = 0.2\nmax_retries = 1\nbackfill_days = 1\n"
        "backfill_batch_intervals = 4\nclock_drift_threshold_seconds = 120\n"
    )
    config_path, spki = agent_config(tmp_path, port, broker.url, extra)
    store_path = tmp_path / "backend.db"
    admin = await open_store(store_path)
    ingest = Ingest(await open_store(store_path), broker_url=broker.url)
    try:
        await enrol(admin, DEVICE, spki, int(time.time()))
        async with running(ingest.run):
            yield Site(clock, meter, load_config(config_path), spki, admin, ingest)
    finally:
        ingest.close()
        await ingest.store.close()
        await admin.close()
        await emulator.stop()


DEVICE = "gw-dlms-1"


PERIOD = 900


SCALE = 900.0  # emulated seconds per real second: one capture period a second


HISTORY = 6  # profile entries the meter holds before the agent's first start


def agent_config(tmp_path: Path, port: str, broker_url: str, extra: str = "") -> tuple[Path, bytes]:
    pem = generate_private_key_pem()
    write_private_key(tmp_path / "device.key", pem, force=False)
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
device_id = "{DEVICE}"
key_path = "device.key"
backend_url = "http://127.0.0.1:8000"
interval_seconds = 900
ack_timeout_seconds = 2
outbox_path = "outbox.sqlite"

[broker]
url = "{broker_url}"

[[meters]]
name = "main"
model = "dlms"
port = "{port}"
baudrate = 9600
client_address = 1
server_address = 1
password = "12345678"
{extra}
"""
    )
    return path, load_signer(pem).public_key_der
