"""Receipts to gateways (backend/log/receipts.py): one per device with readings under a checkpoint
that meets the witness policy, its newest reading there, verified as a gateway does; a checkpoint
short of the quorum holds them until the next one meets it; published (QoS 1, not retained: a
receipt holds a reading) through a real broker, on the device's own topic."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from meterchain.backend.log.cosigning import Cosigning
from meterchain.backend.log.receipts import ReceiptSender, on_sealed
from meterchain.contract.errors import MeterchainError
from meterchain.contract.receipt import Receipt, receipt_topic, verify_receipt
from meterchain.mqtt import BrokerUrl, connect
from meterchain.mqtt.broker import RunningBroker

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory
from tests.support.witness import Witnesses


def receipts_of(chunks: list[list[tuple[str, bytes]]]) -> dict[str, Receipt]:
    out = {}
    for chunk in chunks:
        for topic, payload in chunk:
            receipt = Receipt.from_cbor(payload)
            assert topic == receipt_topic(receipt.device)
            assert receipt.device not in out  # one per device per round
            out[receipt.device] = receipt
    return out


async def test_one_receipt_per_device_for_its_newest_reading(store_factory: StoreFactory) -> None:
    gw1, gw2 = Gateway("gw-1"), Gateway("gw-2")
    admin, ingest, sealer, api = await backend(store_factory, gw1, gw2)
    receipts = ReceiptSender(api, None, chunk=1)  # chunks of one: the chunking is exercised
    sealer.on_sealed = on_sealed(None, receipts)
    try:
        await ingest.process([gw1.message(s) for s in (1, 2, 3)] + [gw2.message(1)])
        await sealer.seal_all()
        assert receipts.pending is not None
        first = receipts_of(await receipts.build(receipts.pending))
        assert {d: r.seq for d, r in first.items()} == {"gw-1": 3, "gw-2": 1}
        for receipt in first.values():
            checkpoint = verify_receipt(receipt, sealer.signer.verifier)
            assert checkpoint.size == receipts.pending.size
        receipts.covered = receipts.pending.size  # as send_round does after a round
        # The next round covers only the newly sealed leaves: gw-2 sent nothing new.
        await ingest.process([gw1.message(4)])
        await sealer.seal_all()
        second = receipts_of(await receipts.build(receipts.pending))
        assert list(second) == ["gw-1"] and second["gw-1"].seq == 4
        verify_receipt(second["gw-1"], sealer.signer.verifier)
    finally:
        await close(admin, ingest, sealer, api)


async def test_receipts_wait_for_the_witness_quorum(store_factory: StoreFactory, tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    witnesses = Witnesses(tmp_path, sealer.signer.verifier)
    policy = witnesses.policy(2)
    cosigning = Cosigning(policy, sealer.store, transport=witnesses.transport())
    receipts = ReceiptSender(api, policy)
    sealer.on_sealed = on_sealed(cosigning, receipts)
    try:
        witnesses.down |= {"w1", "w2"}  # 1 of 3: no receipts for this checkpoint
        await ingest.process([gw.message(1), gw.message(2)])
        await sealer.seal_all()
        assert receipts.pending is None
        witnesses.down.clear()
        for peer in cosigning.peers:  # no backoff in the test
            peer.retry_at = 0.0
        await ingest.process([gw.message(3)])
        await sealer.seal_all()
        assert receipts.pending is not None
        receipts.covered = 0  # the held checkpoint's leaves are in this round too
        receipt = receipts_of(await receipts.build(receipts.pending))["gw-1"]
        assert receipt.seq == 3
        assert verify_receipt(receipt, sealer.signer.verifier, policy).size == receipts.pending.size
        # A stricter policy (3 of 3 with a witness that never cosigned) refuses the same receipt.
        (tmp_path / "other").mkdir()
        strict = Witnesses(tmp_path / "other", sealer.signer.verifier).policy(3)
        try:
            verify_receipt(receipt, sealer.signer.verifier, strict)
        except MeterchainError as exc:
            assert exc.check == "witnesses"
        else:
            raise AssertionError("a receipt without the quorum verified")
    finally:
        await cosigning.close()
        await close(admin, ingest, sealer, api)


async def test_receipts_are_published_on_the_device_topic(tmp_path: Path, broker: RunningBroker) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    receipts = ReceiptSender(api, None, broker=BrokerUrl.parse(broker.url), timeout=5)
    sealer.on_sealed = on_sealed(None, receipts)
    task = asyncio.create_task(receipts.run())
    try:
        async with connect(BrokerUrl.parse(broker.url), client_id="gw-1-test") as client:
            await client.subscribe(receipt_topic("gw-1"), qos=1)
            await ingest.process([gw.message(1), gw.message(2)])
            await sealer.seal_all()
            size = (await api.latest_checkpoint()).size
            async with asyncio.timeout(20):
                message = await anext(aiter(client.messages()))
        assert receipts.covered == size and not message.retain
        receipt = Receipt.from_cbor(message.payload)
        assert (receipt.device, receipt.seq) == ("gw-1", 2)
        assert verify_receipt(receipt, sealer.signer.verifier).size == size
        # Nothing is kept on the broker: a late subscriber gets no receipt.
        async with connect(BrokerUrl.parse(broker.url), client_id="gw-1-late") as late:
            await late.subscribe(receipt_topic("gw-1"), qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(aiter(late.messages()))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close(admin, ingest, sealer, api)
