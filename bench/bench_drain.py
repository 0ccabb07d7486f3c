"""Backlog drain of one gateway once connected (issue 18, goal ≥ 500 readings/s per gateway):
an outbox holding a backlog (the gateway was offline), then the real publisher and the real
ingest on Mosquitto; the time from the broker connection to the last ack, and the publishes per
reading (resend amplification).

    .venv/bin/python bench/bench_drain.py --readings 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from meterchain.agent.acks import AckGuard
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import BrokerConfig
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox
from meterchain.agent.publisher import Publisher
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.store import open_store
from meterchain.contract.message import sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer
from meterchain.mqtt import BrokerUrl
from meterchain.mqtt.broker import start_broker

DEVICE = "gw-drain"
T0 = 1_700_000_100 - 1_700_000_100 % 900


async def fill(outbox: Outbox, signer, readings: int) -> None:  # type: ignore[no-untyped-def]
    kid = key_id(signer.public_key_der)
    for first in range(0, readings, 500):
        entries = []
        for i in range(first, min(readings, first + 500)):
            end = T0 + 900 * (i + 1)
            template = Reading(device=DEVICE, key_id=kid, seq=1, meter="M-1", start=end - 900,
                               end=end, registers={IMPORT_OBIS: Register(1000 + i, "Wh"),
                                                   EXPORT_OBIS: Register(0, "Wh")})

            def sign(seq: int, template: Reading = template) -> bytes:
                return sign_reading(replace(template, seq=seq), signer).to_cbor()

            entries.append(CycleEntry("M-1", end, sign))
        await outbox.append_cycle(entries, now=int(time.time()))


async def run(readings: int, verbose: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mc-drain-"))
    broker = await start_broker(workdir=tmp / "broker")
    signer = load_signer(generate_private_key_pem())
    control = NoteSigner.generate("bench.example/control")
    admin = await open_store(tmp / "mc.db")
    await enrol(admin, DEVICE, signer.public_key_der, int(time.time()))
    ingest = Ingest(await open_store(tmp / "mc.db"), broker_url=broker.url, control=(control,))
    outbox = await Outbox.open(tmp / "outbox.sqlite", DEVICE)
    started = time.perf_counter()
    await fill(outbox, signer, readings)
    print(f"backlog of {readings} readings signed in {time.perf_counter() - started:.1f} s")
    metrics = AgentMetrics()
    publisher = Publisher(device=DEVICE, broker=BrokerConfig(BrokerUrl.parse(broker.url)),
                          outbox=outbox, clock=SystemClock(), metrics=metrics, ack_timeout=60,
                          guard=AckGuard(DEVICE, str(control.verifier), tmp / "device.key"))
    ingest_task = asyncio.create_task(ingest.run())
    await ingest.connected.wait()
    task = asyncio.create_task(publisher.run())
    await publisher.connected.wait()
    began = time.perf_counter()
    last = 0.0
    while depth := await outbox.depth():
        await asyncio.sleep(0.05)
        if verbose and time.perf_counter() - last > 2:
            last = time.perf_counter()
            rows, total = await outbox.outstanding(1)
            print(f"depth {depth} outstanding {total} window {publisher.resend.open} "
                  f"acked_upto {await outbox.acked_upto()}", flush=True)
    seconds = time.perf_counter() - began
    published = metrics.readings_published._value.get()
    load = os.getloadavg()[0]
    print(f"drained {readings} readings in {seconds:.2f} s: {readings / seconds:,.0f} readings/s "
          f"once connected; {published / readings:.2f} publishes per reading; load {load:.1f}")
    for t in (task, ingest_task):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    ingest.close()
    await ingest.store.close()
    await outbox.close()
    await admin.close()
    await broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=5000)
    parser.add_argument("--verbose", action="store_true", help="print the outbox every 2 s")
    args = parser.parse_args()
    asyncio.run(run(args.readings, args.verbose))


if __name__ == "__main__":
    main()
