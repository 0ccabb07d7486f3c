"""Publish -> signed checkpoint covering the reading: p50 / p99, arrival-driven sealing vs the timer.

One Mosquitto on loopback; a paho publisher process sends signed readings at a fixed rate (QoS 1)
and records when it handed each one to paho; this process runs the backend's ingest and sealer
(SQLite WAL/FULL). The sealer records when each seal committed and its size; a reading's latency
is the first committed checkpoint whose size covers its leaf index, minus its publish time. Two
configurations, each on a fresh broker and database, in the same run:

- ``timer``: the sealer before issue 20 (seal every ``--interval`` s or at 10,000 leaves);
- ``arrivals``: a commit wakes the sealer, which waits ``--coalesce`` s for more, then seals
  (``--interval`` stays the upper bound). This is the backend's default.

    .venv/bin/python bench/bench_checkpoint_latency.py --rate 500 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import setup  # noqa: E402  (Mosquitto, signed readings, enrolled database)

#: Publishes the frames at ``rate`` per second; prints the publish time of each frame (JSON).
PACED_PUBLISHER = r"""
import json, sys, time, struct, paho.mqtt.client as mqtt
host, port, path, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
frames = []
data = open(path, "rb").read(); i = 0
while i < len(data):
    tl, pl = struct.unpack(">HH", data[i:i+4]); i += 4
    frames.append((data[i:i+tl].decode(), data[i+tl:i+tl+pl])); i += tl + pl
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paced")
c.max_inflight_messages_set(1000); c.connect(host, port); c.loop_start()
start = time.time() + 0.2; sent = []; infos = []
for k, (topic, payload) in enumerate(frames):
    due = start + k / rate
    pause = due - time.time()
    if pause > 0:
        time.sleep(pause)
    sent.append(time.time())
    infos.append(c.publish(topic, payload, qos=1))
for info in infos: info.wait_for_publish()
print(json.dumps(sent), flush=True); c.loop_stop(); c.disconnect()
"""


def quantile(ms: list[float], q: float) -> float:
    ordered = sorted(ms)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(label: str, n: int, devices: int, rate: float, interval: float,
              coalesce: float | None, workdir: Path) -> dict[str, object]:
    from meterchain.backend.ingest.worker import Ingest
    from meterchain.backend.store import open_store

    broker, frames, db, admin, sealer = await setup(n, devices, workdir)
    sealer.interval, sealer.coalesce = interval, coalesce
    seals: list[tuple[float, int]] = []

    async def on_sealed(size: int, note: str) -> None:
        seals.append((time.time(), size))

    sealer.on_sealed = on_sealed
    seal_ms: list[float] = []
    seal_once = sealer.seal_once

    async def timed_seal(between=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        count = await seal_once(between)
        if count:
            seal_ms.append((time.perf_counter() - start) * 1000)
        return count

    sealer.seal_once = timed_seal  # type: ignore[method-assign]
    txn_ms: list[float] = []  # of each seal, the store's transaction (BEGIN IMMEDIATE .. COMMIT)
    store_seal = sealer.store.seal

    async def timed_txn(*args):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        await store_seal(*args)
        txn_ms.append((time.perf_counter() - start) * 1000)

    sealer.store.seal = timed_txn  # type: ignore[method-assign]
    commits: list[tuple[float, int]] = []  # (when, leaves committed so far, enrolments included)

    def on_commit(count: int) -> None:
        commits.append((time.time(), (commits[-1][1] if commits else devices) + count))
        sealer.notify(count)

    ingest = Ingest(await open_store(db), broker_url=broker.url, on_commit=on_commit)
    tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(sealer.run())]
    await asyncio.wait_for(ingest.connected.wait(), 10)
    load_start = os.getloadavg()
    pub = subprocess.Popen([sys.executable, "-c", PACED_PUBLISHER, broker.host, str(broker.port),
                            str(frames), str(rate)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + n / rate + 120
    while time.time() < deadline:
        await asyncio.sleep(0.1)
        if await admin.reading_count() >= n and await admin.pending_count() == 0:
            break
    out, _ = await asyncio.to_thread(pub.communicate)
    sent = json.loads(out)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ingest.close()
    for s in (admin, ingest.store, sealer.store):
        await s.close()
    await broker.stop()
    with sqlite3.connect(db) as con:
        index = {(d, q): i for d, q, i in con.execute(
            "SELECT r.device, r.seq, l.leaf_index FROM readings r JOIN leaves l ON l.id = r.leaf_id")}
    latencies, committed = [], []
    for k, published in enumerate(sent):
        leaf = index.get((f"gw-{k % devices:03d}", k // devices + 1))
        if leaf is None:
            continue
        covered = next(at for at, size in seals if size > leaf)
        latencies.append((covered - published) * 1000)
        # Leaves are indexed in commit order, so the commit that brought the count past it stored it.
        committed.append((next(at for at, total in commits if total > leaf) - published) * 1000)
    return {
        "config": label, "rate": rate, "readings": n, "covered": len(latencies),
        "seals": len(seals), "interval_s": interval, "coalesce_s": coalesce,
        "p50_ms": statistics.median(latencies), "p99_ms": quantile(latencies, 0.99),
        "max_ms": max(latencies),
        "seal_p50_ms": statistics.median(seal_ms), "seal_max_ms": max(seal_ms),
        "seal_ms": [round(x, 1) for x in seal_ms],
        "seal_txn_ms": [round(x, 1) for x in txn_ms],
        "committed_p50_ms": statistics.median(committed), "committed_p99_ms": quantile(committed, 0.99),
        "load_start": load_start, "load_end": os.getloadavg(),
    }


async def main_async(rate: float, seconds: float, devices: int, interval: float,
                     coalesce: float) -> list[dict[str, object]]:
    n = int(rate * seconds)
    results = []
    for label, wait in (("timer", None), ("arrivals", coalesce)):
        with tempfile.TemporaryDirectory(prefix="mc-bench-cp-") as tmp:
            results.append(await run(label, n, devices, rate, interval, wait, Path(tmp)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="readings per second published")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="seal_interval (both configurations)")
    parser.add_argument("--coalesce", type=float, default=0.05, help="seal_coalesce (arrivals)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.rate, args.seconds, args.devices, args.interval, args.coalesce))
    if args.json:
        print(json.dumps(results))
        return
    print("| sealing | readings covered | seals (each p50 / max ms) | publish -> committed p50 / p99 ms "
          "| publish -> checkpoint p50 / p99 / max ms | load average |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['config']} (interval {r['interval_s']} s, coalesce {r['coalesce_s']}) "
              f"| {r['covered']} / {r['readings']} | {r['seals']} ({r['seal_p50_ms']:.0f} / {r['seal_max_ms']:.0f}) "
              f"| {r['committed_p50_ms']:.0f} / {r['committed_p99_ms']:.0f} "
              f"| {r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} "
              f"| {r['load_start'][0]:.2f} -> {r['load_end'][0]:.2f} |")  # type: ignore[index]


if __name__ == "__main__":
    main()
