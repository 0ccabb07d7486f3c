"""Receipts to gateways (issue 17): the cost of one round for many devices. N devices each with
readings under one checkpoint (real ingest, real sealer, SQLite); then the round the receipt task
runs after that checkpoint: building N receipts (each device's newest reading, its inclusion
proof, the note) and publishing them QoS 1 retained through Mosquitto, and the sealer's own share
(``offer``: checking the note against the policy, without a policy here). With ``--gateway N``
instead: what a gateway writes to its view file per receipt (agent/receipts.py, N receipts that
each move the view; ``/proc/self/io`` write_bytes, the WAL checkpoint included).

    .venv/bin/python bench/bench_receipts.py --devices 2000
    .venv/bin/python bench/bench_receipts.py --gateway 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.receipts import ReceiptSender, on_sealed
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_store
from meterchain.contract.note import NoteSigner
from meterchain.mqtt import BrokerUrl, connect
from meterchain.mqtt.broker import start_broker


async def run(devices: int, readings: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests.support
    from tests.support.backend import Gateway

    tmp = Path(tempfile.mkdtemp(prefix="mc-receipts-"))
    broker = await start_broker(workdir=tmp / "broker")
    db = tmp / "mc.db"
    admin = await open_store(db)
    gateways = [Gateway(f"gw-{i:05d}") for i in range(devices)]
    for gw in gateways:
        await enrol(admin, gw.device, gw.public_key, int(time.time()))
    ingest = Ingest(await open_store(db))
    sealer = Sealer(await open_store(db), NoteSigner.generate("bench.example/log"), max_leaves=100_000)
    reader = await open_store(db)
    sender = ReceiptSender(reader, None, broker=BrokerUrl.parse(broker.url))
    sealer.on_sealed = on_sealed(None, sender)
    try:
        await sealer.seal_all()  # the device leaves
        sender.covered = (await reader.latest_checkpoint()).size  # type: ignore[union-attr]
        for first in range(1, readings + 1):
            await ingest.process([gw.message(first) for gw in gateways])
        offered: list[float] = []
        original = sender.offer

        def timed_offer(size: int, note: str) -> None:
            began = time.perf_counter()
            original(size, note)
            offered.append(time.perf_counter() - began)

        sender.offer = timed_offer  # type: ignore[method-assign]
        await sealer.seal_all()
        assert sender.pending is not None
        size = sender.pending.size
        began = time.perf_counter()
        chunks = await sender.build(sender.pending)
        built = time.perf_counter() - began
        payloads = [p for chunk in chunks for _, p in chunk]
        async with connect(BrokerUrl.parse(broker.url), client_id="bench-receipts", max_inflight=100) as client:
            began = time.perf_counter()
            sent = await sender.send_round(client)
            round_seconds = time.perf_counter() - began
        print(f"devices {devices}, {readings} reading(s) each, tree size {size}, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"  sealer's share (offer):   {statistics.mean(offered) * 1e6:.0f} µs")
        print(f"  build {len(payloads)} receipts:      {built:.2f} s ({built / len(payloads) * 1e3:.2f} ms each)")
        print(f"  round (build + publish):  {round_seconds:.2f} s, {sent} PUBACKed "
              f"({sent / round_seconds:.0f} receipts/s)")
        print(f"  receipt size:             {statistics.mean(map(len, payloads)):.0f} B mean, "
              f"{max(map(len, payloads))} B max")
    finally:
        ingest.close()
        for store in (ingest.store, sealer.store, reader, admin):
            await store.close()
        await broker.stop()


async def gateway_writes(receipts: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests.support
    import httpx
    from meterchain.agent.metrics import AgentMetrics
    from meterchain.agent.receipts import ConsistencySource, ReceiptKeeper

    from tests.support.backend import Gateway
    from tests.support.receipts import POLICY_2_OF_3, ReceiptLog

    def written() -> int:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("write_bytes"))

    tmp = Path(tempfile.mkdtemp(prefix="mc-receipts-gw-", dir="/var/tmp"))  # a disk, not tmpfs
    log = ReceiptLog(Gateway("gw-bench"))
    log.append(1)
    proofs = ConsistencySource("http://backend.bench", log.signer.verifier,
                               client=httpx.AsyncClient(transport=log.transport()))
    keeper = ReceiptKeeper(device="gw-bench", log_key=log.signer.verifier, policy=POLICY_2_OF_3,
                           outbox_path=tmp / "outbox.sqlite", proofs=proofs, metrics=AgentMetrics())
    await keeper.handle(log.receipt(1))
    payloads = []
    for seq in range(2, receipts + 2):
        log.append(seq)
        payloads.append(log.receipt(seq))
    os.sync()
    before = written()
    for payload in payloads:
        assert await keeper.handle(payload) == "advanced"
    keeper.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.sync()
    print(f"gateway view: {(written() - before) / receipts:.0f} B written per receipt over {receipts} "
          f"receipts, load average {os.getloadavg()[0]:.1f}")
    keeper.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--readings", type=int, default=1, help="readings per device under the checkpoint")
    parser.add_argument("--gateway", type=int, default=0, help="measure a gateway's writes over this many receipts")
    args = parser.parse_args()
    if args.gateway:
        asyncio.run(gateway_writes(args.gateway))
    else:
        asyncio.run(run(args.devices, args.readings))


if __name__ == "__main__":
    main()
