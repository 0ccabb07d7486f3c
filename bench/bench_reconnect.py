"""From a broker back to the agent connected (issue 20: 23 s measured before, goal ≤ 2 s).

Two agent publishers (agent/publisher.py, each on its own outbox, the default ``Backoff``) stay
connected to one Mosquitto on loopback; the broker is stopped for ``--outages`` seconds each and
started again on the same port. One publisher probes the broker's port while it waits (the
default since issue 20), the other does not (``Backoff(probe=0)``, as before): like for like, in
the same outages. The time is from ``start_mosquitto`` returning (its port accepts) to each
publisher's ``connected`` event; the protocol of each connection is recorded (MQTT 5 is asked for
on every reconnect).

    .venv/bin/python bench/bench_reconnect.py --outages 3,10,30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path


async def main_async(outages: list[float]) -> dict[str, object]:
    from meterchain.agent.clock import SystemClock
    from meterchain.agent.config import BrokerConfig
    from meterchain.agent.metrics import AgentMetrics
    from meterchain.agent.outbox import Outbox
    from meterchain.agent.publisher import Publisher
    from meterchain.mqtt import Backoff, BrokerUrl
    from meterchain.mqtt.broker import find_mosquitto, free_port, start_mosquitto

    logging.getLogger("meterchain").setLevel(logging.ERROR)  # the retries are expected here
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("this bench needs Mosquitto")
    port = free_port()
    variants = {"probe (now)": Backoff(), "no probe (before)": Backoff(probe=0)}
    results: dict[str, list[dict[str, object]]] = {name: [] for name in variants}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mc-bench-reconnect-") as tmp:
        work = Path(tmp)
        broker = await start_mosquitto(binary, port=port, workdir=work / "broker-0")
        url = BrokerUrl.parse(f"mqtt://127.0.0.1:{port}")
        publishers: dict[str, Publisher] = {}
        tasks = []
        outboxes = []
        try:
            for index, (name, backoff) in enumerate(variants.items()):
                outbox = await Outbox.open(work / f"outbox-{index}.sqlite", f"gw-reconnect-{index}")
                outboxes.append(outbox)
                publishers[name] = Publisher(
                    device=f"gw-reconnect-{index}", broker=BrokerConfig(url), outbox=outbox,
                    clock=SystemClock(), metrics=AgentMetrics(), ack_timeout=60, backoff=backoff)
                tasks.append(asyncio.create_task(publishers[name].run()))
            for publisher in publishers.values():
                await asyncio.wait_for(publisher.connected.wait(), 30)
            for number, outage in enumerate(outages, start=1):
                await broker.stop()
                await asyncio.sleep(0.2)
                for publisher in publishers.values():
                    await asyncio.wait_for(_cleared(publisher.connected), 30)
                await asyncio.sleep(max(0.0, outage - 0.2))
                broker = await start_mosquitto(binary, port=port, workdir=work / f"broker-{number}")
                answering = time.monotonic()
                waits = {name: asyncio.create_task(_connected_at(p.connected))
                         for name, p in publishers.items()}
                for name, wait in waits.items():
                    back = await asyncio.wait_for(wait, outage + 60)
                    results[name].append({"outage_s": outage, "back_after_s": round(back - answering, 3),
                                          "protocol": publishers[name].protocol.name})
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for outbox in outboxes:
                await outbox.close()
            await broker.stop()
    summary = {name: {"max_s": max(float(r["back_after_s"]) for r in rows),  # type: ignore[arg-type]
                      "median_s": statistics.median(float(r["back_after_s"]) for r in rows)}  # type: ignore[arg-type]
               for name, rows in results.items()}
    return {"outages_s": outages, "results": results, "summary": summary, "load_start": load_start,
            "load_end": os.getloadavg(),
            "command": f"bench/bench_reconnect.py --outages {','.join(f'{o:g}' for o in outages)}"}


async def _cleared(event: asyncio.Event) -> None:
    while event.is_set():
        await asyncio.sleep(0.01)


async def _connected_at(event: asyncio.Event) -> float:
    await event.wait()
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", default="3,10,30", help="seconds the broker is down, comma-separated")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async([float(o) for o in args.outages.split(",")]))
    if args.json:
        print(json.dumps(result))
        return
    print(result["command"])
    print(f"load average {result['load_start'][0]:.2f} -> {result['load_end'][0]:.2f}")  # type: ignore[index]
    print("| broker down for | " + " | ".join(result["results"]) + " |")  # type: ignore[arg-type]
    print("|---:|" + "---:|" * len(result["results"]))  # type: ignore[arg-type]
    rows = result["results"]
    outages = result["outages_s"]
    assert isinstance(rows, dict) and isinstance(outages, list)
    for i, outage in enumerate(outages):
        cells = [f"{rows[name][i]['back_after_s']:.2f} s ({rows[name][i]['protocol']})" for name in rows]
        print(f"| {outage:g} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
