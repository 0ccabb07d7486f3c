"""Ingest scale-out: 1 vs 2 ingest worker processes in an MQTT 5 share group, same run.

Per configuration: a fresh Mosquitto on loopback and a fresh SQLite file; N worker processes
(``meterchain backend serve --role ingest [--share-group bench]``) subscribe, then are paused
(SIGSTOP) while a paho publisher process sends M signed readings (QoS 1): the broker holds a
backlog for them. The rate is M / (time from resuming the workers to the last reading committed
AND sealed by the sealer in this process), so the publisher's own speed is out of the figure.
Beside them, the same backlog drained by a bare aiomqtt subscriber speaking MQTT 3.1.1 (plain)
and MQTT 5 (share group), to show what MQTT 5 reception alone costs in paho.

    .venv/bin/python bench/bench_scale_out.py --messages 20000 --devices 200 --repeat 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import PUBLISHER, make_messages, setup  # noqa: E402  (same publisher, readings)

#: A subscriber that only counts: how fast aiomqtt (paho) receives, by protocol.
RECEIVER = r"""
import asyncio, logging, sys, time, aiomqtt
group, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
v5 = bool(group) or sys.argv[5:6] == ["5"]  # a share group needs MQTT 5; plain may use either
quiet = logging.getLogger("quiet"); quiet.setLevel(logging.ERROR)
session = ({"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": True} if v5
           else {"clean_session": False})
async def main():
    async with aiomqtt.Client(host, port, identifier="bare-" + (group or "plain"), logger=quiet,
                              max_inflight_messages=1000, **session) as client:
        topic = (f"$share/{group}/" if group else "") + "meterchain/v1/+/readings"
        await client.subscribe(topic, qos=1)
        print("ready", flush=True)
        got, started = 0, None
        async for _ in client.messages:
            started = started or time.perf_counter()
            got += 1
            if got == n:
                print(n / (time.perf_counter() - started), flush=True)
                return
asyncio.run(main())
"""
#: (label, workers, share group); the default deployment first.
CONFIGS = (("1 worker, plain subscription", 1, ""), ("1 worker, share group", 1, "bench"),
           ("2 workers, share group", 2, "bench"))


async def _healthy(port: int) -> dict[str, object] | None:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/healthz")
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


async def run(label: str, workers: int, group: str, n: int, devices: int,
              workdir: Path) -> dict[str, object]:
    from meterchain.mqtt.broker import free_port

    workdir.mkdir(parents=True)
    broker, frames, db, admin, sealer = await setup(n, devices, workdir)
    # Workers sign acks with the sealer's control key (issue 14) and wait for it before they
    # subscribe: the sealer here is this process's, so make it as `serve --role sealer` would.
    from meterchain.backend.ingest.control_key import load_or_create_control_key
    await load_or_create_control_key(workdir / "control.key", "bench.example/log", admin, create=True)
    sealing = asyncio.create_task(sealer.run())
    ports = [free_port() for _ in range(workers)]
    procs = [subprocess.Popen(
        [sys.executable, "-c", "from meterchain.cli.main import main; main()", "backend", "serve",
         "--db", str(db), "--broker", broker.url, "--role", "ingest",
         "--log-key", str(workdir / "log.key"), "--http-port", str(port),
         "--client-id", f"bench-{i}", *(["--share-group", group] if group else [])],
        stdout=subprocess.DEVNULL, stderr=(workdir / f"worker-{i}.log").open("wb"))
        for i, port in enumerate(ports)]
    try:
        deadline = time.monotonic() + 30
        for port in ports:
            while await _healthy(port) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"a worker did not subscribe; see {workdir}/worker-*.log")
                await asyncio.sleep(0.1)
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)  # connected, not reading: the broker queues
        pub = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), str(frames)],
            capture_output=True, text=True, check=True)
        published_in = float(pub.stdout.split()[1]) - float(pub.stdout.split()[0])
        started = time.perf_counter()
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        while await admin.reading_count() < n or await admin.pending_count():
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        shares = []
        for port in ports:
            health = await _healthy(port)
            stats = health["ingest"]["stats"] if health else {}  # type: ignore[index]
            shares.append(stats.get("stored", 0))  # type: ignore[union-attr]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        sealing.cancel()
        await asyncio.gather(sealing, return_exceptions=True)
        for store in (admin, sealer.store):
            await store.close()
        await broker.stop()
    return {"config": label, "messages": n, "devices": devices,
            "published_in_s": round(published_in, 2), "drained_in_s": round(elapsed, 2),
            "committed_sealed_per_s": round(n / elapsed), "stored_per_worker": shares}


async def receive_only(group: str, n: int, devices: int, workdir: Path, protocol: str = "") -> int:
    """A bare subscriber's rate over the same kind of backlog (paused while it is published);
    ``protocol`` "5" makes a plain subscriber speak MQTT 5 (as ingest does: meterchain.mqtt)."""
    from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

    workdir.mkdir(parents=True)
    broker = await start_mosquitto(find_mosquitto() or "mosquitto", workdir=workdir / "broker")
    frames = workdir / "frames.bin"
    make_messages(frames, n, devices)
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, group, broker.host, str(broker.port),
                             str(n), protocol], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGSTOP)
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", PUBLISHER, broker.host,
                                                 str(broker.port), str(frames)],
                                capture_output=True, check=True)
        proc.send_signal(signal.SIGCONT)
        return round(float(await asyncio.to_thread(proc.stdout.readline)))
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        await broker.stop()


async def main_async(n: int, devices: int, repeat: int) -> None:
    results: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="mc-bench-scale-") as tmp:
        for r in range(repeat):
            for i, (label, workers, group) in enumerate(CONFIGS):
                row = await run(label, workers, group, n, devices, Path(tmp) / f"{r}-{i}")
                print(json.dumps(row), flush=True)
                rate = int(row["committed_sealed_per_s"])  # type: ignore[call-overload]
                results.setdefault(label, []).append(rate)
            for j, (label, group) in enumerate((("bare aiomqtt, MQTT 3.1.1", ""),
                                                 ("bare aiomqtt, MQTT 5 share group", "bench"))):
                rate = await receive_only(group, n, devices, Path(tmp) / f"{r}-bare-{j}")
                print(json.dumps({"config": label, "messages": n, "received_per_s": rate}))
                results.setdefault(label, []).append(rate)
    base = max(results[CONFIGS[0][0]])
    print("| configuration | msg/s (runs): committed + sealed, or received "
          "| best / 1 worker plain |")
    print("| --- | ---: | ---: |")
    for label, rates in results.items():
        print(f"| {label} | {', '.join(f'{x:,}' for x in rates)} | {max(rates) / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="rounds over all configurations")
    args = parser.parse_args()
    asyncio.run(main_async(args.messages, args.devices, args.repeat))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
