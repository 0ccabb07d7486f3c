"""The agent end to end: emulated meters on a pty -> agent -> real broker -> a verifying test backend.

Intervals are one second (the agent's interval length is configurable and time is injected).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from meterchain.agent.outbox import Outbox
from meterchain.mqtt.broker import RunningBroker, find_mosquitto, start_mosquitto

from tests.support.agent import (
    DEVICE,
    Gateway,
    VerifyingBackend,
    running,
    start_gateway,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)  # condition-based waits of up to 60 s each


@pytest.fixture
async def gateway(tmp_path: Path, broker: RunningBroker):
    gw = await start_gateway(tmp_path, broker.url)
    try:
        yield gw
    finally:
        await gw.bus.stop()


def backend_for(gw: Gateway, broker_url: str) -> VerifyingBackend:
    return VerifyingBackend(broker_url, {DEVICE: gw.spki})


def assert_stream_is_whole(backend: VerifyingBackend) -> list[int]:
    """Seqs 1..n each stored once, no conflicts, no (meter, interval) twice."""
    stored = backend.stored[DEVICE]
    done = sorted(set(stored) | set(backend.rejected.get(DEVICE, {})))
    assert done == list(range(1, len(done) + 1))
    assert backend.conflicts == [] and backend.invalid == []
    slots = [(s.reading.meter, s.reading.end) for s in stored.values()]
    assert len(slots) == len(set(slots))
    return done


async def outbox_state(gw: Gateway) -> tuple[int, int]:
    async with await Outbox.open(gw.config.outbox_path, DEVICE) as outbox:
        return await outbox.depth(), await outbox.next_seq()


async def test_readings_flow_from_meters_to_the_backend_and_leave_the_outbox(
    gateway: Gateway, broker: RunningBroker
) -> None:
    backend = backend_for(gateway, broker.url)
    agent = gateway.agent()
    async with running(backend.run), running(agent.run):
        await wait_until(lambda: backend.upto(DEVICE) >= 6, 60, "six readings acked")
        await wait_until(lambda: agent.metrics.outbox_depth._value.get() == 0, 30, "empty outbox")
    done = assert_stream_is_whole(backend)
    readings = [backend.stored[DEVICE][seq].reading for seq in done]
    assert {r.meter for r in readings} == {"630001", "120002"}
    assert all(r.end - r.start == 1 and r.key_id == readings[0].key_id for r in readings)
    by_meter: dict[str, list[int]] = {}
    for r in readings:
        by_meter.setdefault(r.meter, []).append(r.import_wh)
    assert all(values == sorted(values) for values in by_meter.values())  # counters only grow
    assert agent.metrics.readings_signed._value.get() == len(done)
    assert agent.metrics.readings_acked._value.get() >= len(done)
    assert agent.publisher is not None
    expected = "V5" if broker.kind == "mosquitto" else "V311"
    assert agent.publisher.protocol.name == expected


async def test_the_outbox_keeps_readings_across_an_agent_restart(
    gateway: Gateway, broker: RunningBroker
) -> None:
    backend = backend_for(gateway, broker.url)
    async with running(backend.run):
        first = gateway.agent()
        async with running(first.run):
            await wait_until(lambda: backend.upto(DEVICE) >= 2, 60, "first readings acked")
            backend.paused = True  # the backend is down: readings pile up in the outbox
            paused_at = first.metrics.readings_signed._value.get()
            await wait_until(lambda: first.metrics.readings_signed._value.get() >= paused_at + 2,
                             60, "two readings signed while the backend is down")
        # The agent 'crashed' (task cancelled) with unconfirmed readings on disk.
        depth, next_seq = await outbox_state(gateway)
        assert depth >= 2
        backend.paused = False
        async with running(gateway.agent().run):
            await wait_until(
                lambda: backend.upto(DEVICE) >= next_seq + 1, 60, "backlog and new readings acked"
            )
    done = assert_stream_is_whole(backend)
    assert len(done) >= next_seq + 1  # nothing lost, no seq reused (no conflicts)


async def test_readings_survive_a_broker_outage(
    tmp_path: Path, gateway: Gateway, broker: RunningBroker
) -> None:
    if broker.kind != "mosquitto":
        pytest.skip("needs Mosquitto to kill and restart on the same port")

    backend = backend_for(gateway, broker.url)
    agent = gateway.agent()
    async with running(backend.run), running(agent.run):
        await wait_until(lambda: backend.upto(DEVICE) >= 2, 60, "first readings acked")
        broker.process.kill()  # type: ignore[attr-defined]
        await asyncio.to_thread(broker.process.wait)  # type: ignore[attr-defined]
        signed_before = agent.metrics.readings_signed._value.get()
        await wait_until(
            lambda: agent.metrics.readings_signed._value.get() >= signed_before + 6,
            60,
            "polling to go on without a broker",
        )
        restarted = await start_mosquitto(
            find_mosquitto() or "mosquitto", port=broker.port, workdir=tmp_path / "broker2"
        )
        try:
            signed = agent.metrics.readings_signed._value.get()
            await wait_until(
                lambda: backend.upto(DEVICE) >= signed, 60, "the backlog to arrive after the outage"
            )
        finally:
            await restarted.stop()
    assert_stream_is_whole(backend)
    assert agent.metrics.broker_failures._value.get() >= 1


async def test_a_rejected_reading_is_quarantined_and_later_ones_still_flow(
    gateway: Gateway, broker: RunningBroker
) -> None:
    backend = backend_for(gateway, broker.url)
    backend.reject_for_good = {2: "signature"}
    agent = gateway.agent()
    async with running(backend.run), running(agent.run):
        await wait_until(lambda: backend.upto(DEVICE) >= 6, 60, "readings past the rejection")
        await wait_until(
            lambda: agent.metrics.readings_quarantined.labels(reason="signature")._value.get() == 1,
            10,
            "the quarantine metric",
        )
    assert_stream_is_whole(backend)
    assert 2 not in backend.stored[DEVICE]
    async with await Outbox.open(gateway.config.outbox_path, DEVICE) as outbox:
        quarantined = await outbox.quarantined()
    assert [(q.seq, q.reason) for q in quarantined] == [(2, "signature")]


async def test_an_unconfirmed_reading_is_published_again_after_the_ack_timeout(
    gateway: Gateway, broker: RunningBroker
) -> None:
    backend = backend_for(gateway, broker.url)
    backend.drop_first_delivery = True  # the backend 'loses' every first copy
    agent = gateway.agent()
    async with running(backend.run), running(agent.run):
        await wait_until(lambda: backend.upto(DEVICE) >= 4, 60, "readings acked after republish")
    assert_stream_is_whole(backend)
    assert all(backend.deliveries[(DEVICE, seq)] >= 2 for seq in range(1, 5))
    assert agent.metrics.readings_published._value.get() >= 8


async def test_a_broken_meter_does_not_stop_the_others(
    gateway: Gateway, broker: RunningBroker
) -> None:
    backend = backend_for(gateway, broker.url)
    gateway.bus.meters[2].faults.silent = True
    agent = gateway.agent()
    async with running(backend.run), running(agent.run):
        await wait_until(lambda: backend.upto(DEVICE) >= 3, 60, "the healthy meter's readings")
    assert {s.reading.meter for s in backend.stored[DEVICE].values()} == {"630001"}
    errors = agent.metrics.meter_read_errors.labels(meter="heat-pump", kind="MeterTimeout")
    assert errors._value.get() >= 3
