"""End to end over a real broker: emulated meters → agent → backend (ingest, sealer, API) → a
proof bundle that `meterchain verify` accepts. Every reading signed is stored exactly once and sealed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices.registry import enrol
from meterchain.backend.service import serve
from meterchain.backend.store import open_store
from meterchain.mqtt.broker import RunningBroker, free_port

from tests.support.agent import DEVICE, running, start_gateway, wait_until

pytestmark = pytest.mark.timeout(300)


def _fetch(url: str, token: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


async def test_every_reading_is_stored_once_sealed_and_provable(tmp_path: Path, broker: RunningBroker) -> None:
    gateway = await start_gateway(tmp_path / "gateway", broker.url)
    port = free_port()
    config = BackendConfig(
        db=str(tmp_path / "backend.sqlite"), broker=broker.url, http_port=port,
        log_key=str(tmp_path / "log.key"), origin="e2e.meterchain.test/log",
        admin_token="e2e-admin-token", seal_interval=0.5,
    )
    store = await open_store(config.db)
    await enrol(store, DEVICE, gateway.spki, int(time.time()))
    stop, ready = asyncio.Event(), asyncio.Event()
    backend = asyncio.create_task(serve(config, stop=stop, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 120)  # a start-up budget: load 10-20 slows it many times
        agent = gateway.agent()
        async with running(agent.run):
            await wait_until(lambda: agent.metrics.readings_signed._value.get() >= 10, 40, "ten readings")
            assert agent.poller is not None
            agent.poller.sources = []  # the meters fall silent: nothing new is signed from here
            signed = int(agent.metrics.readings_signed._value.get())
            await wait_until(lambda: agent.metrics.readings_acked._value.get() >= signed, 30, "every ack")
            await wait_until(lambda: agent.metrics.outbox_depth._value.get() == 0, 10, "an empty outbox")

        async def sealed() -> bool:
            checkpoint = await store.latest_checkpoint()
            return checkpoint is not None and checkpoint.size >= signed + 1  # + the device leaf

        deadline = time.monotonic() + 20
        while not await sealed():
            assert time.monotonic() < deadline, "not sealed within 20 s"
            await asyncio.sleep(0.2)
        rows = await store.readings(DEVICE, 0, 2**53 - 1, 10_000)
        assert [r.seq for r in rows] == list(range(1, signed + 1)), "each signed reading stored exactly once"
        assert len({(r.meter, r.end) for r in rows}) == signed
        assert all(r.leaf_index is not None for r in rows)
        assert {r.meter for r in rows} == {"630001", "120002"}

        api = f"http://127.0.0.1:{port}/api/v1"
        for seq in (1, signed):
            bundle = await asyncio.to_thread(
                _fetch, f"{api}/devices/{DEVICE}/readings/{seq}/bundle", config.admin_token
            )
            (tmp_path / f"{seq}.tlog-proof").write_bytes(bundle)
        key = await asyncio.to_thread(_fetch, f"{api}/log/public-key", config.admin_token)
        (tmp_path / "log.pub").write_bytes(key)
        for seq in (1, signed):
            result = subprocess.run(
                [sys.executable, "-m", "meterchain.cli.main", "verify", str(tmp_path / f"{seq}.tlog-proof"),
                 "--log-key", str(tmp_path / "log.pub")],
                capture_output=True, text=True,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"verified: reading {DEVICE}#{seq}" in result.stdout
    finally:
        stop.set()
        await asyncio.wait_for(backend, 60)
        await store.close()
        await gateway.bus.stop()
