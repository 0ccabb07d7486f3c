"""Ingest over a real broker: acks after commit, junk on the wire, a backend restart; into
SQLite and into PostgreSQL (``store_factory``)."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
from meterchain.backend.ingest.worker import Ingest
from meterchain.contract.ack import ack_topic
from meterchain.contract.control import ACK_V2_TYPE, SignedAck, open_control, read_unverified
from meterchain.mqtt import Backoff, BrokerUrl
from meterchain.mqtt.broker import RunningBroker

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory


def _client(broker: RunningBroker, name: str) -> aiomqtt.Client:
    a = BrokerUrl.parse(broker.url)
    return aiomqtt.Client(a.host, a.port, username=a.username, password=a.password, identifier=name)


async def _wait_ack(client: aiomqtt.Client, upto: int, timeout: float = 10,
                    signed_by: Ingest | None = None) -> SignedAck:
    """The first ack covering ``upto``; with ``signed_by``, verified with its control key."""
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            if signed_by is not None:
                body, _ = open_control(payload, ACK_V2_TYPE, [signed_by.control[0].verifier])
            else:
                body = read_unverified(payload, ACK_V2_TYPE)
            ack = SignedAck.from_body(body)
            if ack.upto >= upto:
                return ack
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def _running(ingest: Ingest):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(ingest.run(backoff=Backoff(initial=0.05, maximum=0.2)))
    try:
        await asyncio.wait_for(ingest.connected.wait(), 10)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_readings_flow_acks_follow_commits_and_junk_does_not_stop_ingest(
    store_factory: StoreFactory, broker: RunningBroker
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    ingest.broker_url = broker.url
    async with _running(ingest), _client(broker, "gw-1") as client:
        await client.subscribe(ack_topic("gw-1"), qos=1)
        for payload in (b"\xff" * 100, b"\x82", bytes(60_000)):
            await client.publish(gw.topic, payload, qos=1)
        for seq in range(1, 21):
            await client.publish(*gw.message(seq), qos=1)
        ack = await _wait_ack(client, 20, signed_by=ingest)
        assert ack.upto == 20 and ack.rejected == ()
        assert await api.reading_count("gw-1") == 20  # committed before the ack was sent
        assert ingest.stats["rejected:encoding"] == 2 and ingest.stats["rejected:size"] == 1
    await close(admin, ingest, sealer, api)


async def test_backend_restart_keeps_everything_receives_the_backlog_and_re_acks(
    store_factory: StoreFactory, broker: RunningBroker
) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    ingest.broker_url = broker.url
    async with _client(broker, "gw-1") as client:
        async with _running(ingest):
            await client.subscribe(ack_topic("gw-1"), qos=1)
            for seq in range(1, 6):
                await client.publish(*gw.message(seq), qos=1)
            await _wait_ack(client, 5)
        ingest.close()
        await ingest.store.close()
        # While the backend is down the broker queues for its persistent session.
        for seq in range(6, 11):
            await client.publish(*gw.message(seq), qos=1)
        await client.publish(*gw.message(3), qos=1)  # a replay of something already stored
        # Checking in a worker process, as `serve` does by default (issue 20).
        restarted = Ingest(await store_factory.open(), broker_url=broker.url, check_processes=1)
        async with _running(restarted):
            assert (await _wait_ack(client, 10)).upto == 10
        assert await api.reading_count("gw-1") == 10
        assert restarted.stats["duplicate"] == 1
    # A gateway that connects later gets the retained ack at once.
    async with _client(broker, "gw-1-late") as late:
        await late.subscribe(ack_topic("gw-1"), qos=1)
        assert (await _wait_ack(late, 10, timeout=5)).upto == 10
    await close(admin, restarted, sealer, api)
