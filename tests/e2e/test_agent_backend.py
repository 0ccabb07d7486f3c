"""The agent against the real backend ingest, and against a broker whose ACL refuses it (MQTT 5)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest
from meterchain.agent.outbox import Outbox
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.mqtt.broker import RunningBroker, find_mosquitto, free_port

from tests.support.agent import DEVICE, running, start_gateway, wait_until

pytestmark = pytest.mark.timeout(90)


async def test_the_real_backend_stores_every_reading_once_and_the_outbox_empties(
    tmp_path: Path, broker: RunningBroker
) -> None:
    gateway = await start_gateway(tmp_path / "gateway", broker.url)
    store_path = tmp_path / "backend.db"
    admin = await open_store(store_path)
    ingest = Ingest(await open_store(store_path), broker_url=broker.url)
    try:
        await enrol(admin, DEVICE, gateway.spki, int(time.time()))
        agent = gateway.agent()
        async with running(ingest.run), running(agent.run):
            await wait_until(
                lambda: agent.metrics.readings_signed._value.get() >= 8, 30, "readings"
            )
            signed = int(agent.metrics.readings_signed._value.get())
            await wait_until(
                lambda: agent.metrics.readings_acked._value.get() >= signed,
                30,
                "the backend's acks for every signed reading",
            )
            assert agent.outbox is not None
            acked = await agent.outbox.acked_upto()  # in memory; on disk at the next purge
        rows = [await admin.reading(DEVICE, seq) for seq in range(1, signed + 1)]
        assert all(row is not None for row in rows)
        assert await admin.reading_count(DEVICE) >= signed
        async with await Outbox.open(gateway.config.outbox_path, DEVICE) as outbox:
            assert await outbox.quarantined() == []
        assert acked >= signed
    finally:
        ingest.close()
        await ingest.store.close()
        await admin.close()
        await gateway.bus.stop()


async def _mosquitto_denying_readings(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto whose ACL lets anonymous clients read acks but publish nothing."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs Mosquitto (amqtt has neither MQTT 5 nor ACL reason codes)")
    workdir.mkdir(parents=True)
    port = free_port()
    (workdir / "acl").write_text("topic read meterchain/v1/+/ack\n")
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        # As root Mosquitto drops to user "mosquitto", which cannot read pytest's tmp dir.
        f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"acl_file {workdir / 'acl'}\nlog_dest stderr\nlog_type error\n"
    )
    process = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            await asyncio.sleep(0.05)


async def test_a_publish_refused_by_the_broker_acl_is_counted_and_kept(tmp_path: Path) -> None:
    process, port = await _mosquitto_denying_readings(tmp_path / "broker")
    gateway = await start_gateway(tmp_path / "gateway", f"mqtt://127.0.0.1:{port}", ack_timeout=1)
    try:
        agent = gateway.agent()
        refused = agent.metrics.publish_refused.labels(reason="Not authorized")
        async with running(agent.run):
            await wait_until(lambda: refused._value.get() >= 4, 30, "0x87 PUBACKs counted")
            assert agent.outbox is not None  # sends are counted in memory (agent/outbox.py)
            sent = [r.send_count for r in await agent.outbox.readings()]
        assert agent.publisher is not None and agent.publisher.protocol.name == "V5"
        assert agent.metrics.readings_published._value.get() == 0
        async with await Outbox.open(gateway.config.outbox_path, DEVICE) as outbox:
            kept = await outbox.readings()
        assert len(kept) >= 2 and len(sent) >= 2 and all(count >= 1 for count in sent[:2])
    finally:
        process.kill()
        process.wait()
        await gateway.bus.stop()
