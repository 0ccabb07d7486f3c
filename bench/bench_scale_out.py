"""Ingest scale-out: 1 vs 2 ingest worker processes in an MQTT 5 share group, same run.

Per configuration: a fresh Mosquitto on loopback and a fresh SQLite file; N worker processes
(``meterchain backend serve --role ingest [--share-group bench]``) subscribe, then are paused
(SIGSTOP) while a paho publisher process sends M signed readings (QoS 1): the broker holds a
backlog for them. The rate is M / (time from resuming the workers to the last reading committed
AND sealed by the sealer in this process), so the publisher's own speed is out of the figure.
Beside them, the same backlog drained by a bare aiomqtt subscriber speaking MQTT 3.1.1 (plain)
and MQTT 5 (share group), to show what MQTT 5 reception alone costs in paho.

Each worker row also gives CPU-µs per message by stage (issue 20): what the workers report on
``/metrics`` (``meterchain_ingest_stage_cpu_seconds``: receive, check in the check processes,
store, ack, loop, other threads), the workers' whole CPU with their check processes (/proc), the
sealer's (this process), and the check's parts replayed one by one on the same readings.

    .venv/bin/python bench/bench_scale_out.py --messages 20000 --devices 200 --repeat 2
    .venv/bin/python bench/bench_scale_out.py --messages 10000 --devices 100 --check-processes 1,0,2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import PUBLISHER, make_messages, setup  # noqa: E402  (same publisher, readings)

T = TypeVar("T")

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
#: The same, with paho's own network loop (``loop_forever``, no asyncio): MQTT 3.1.1, persistent.
PAHO_RECEIVER = r"""
import sys, time, paho.mqtt.client as mqtt
host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
state = {"got": 0, "started": None}
def on_message(c, u, m):
    state["started"] = state["started"] or time.perf_counter()
    state["got"] += 1
    if state["got"] == n:
        print(n / (time.perf_counter() - state["started"]), flush=True)
        c.disconnect()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-paho-loop", clean_session=False)
c.on_message = on_message
c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("meterchain/v1/+/readings", qos=1)
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect(host, port)
c.loop_forever()
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


def read_frames(path: Path) -> list[tuple[str, bytes]]:
    """The (topic, payload) pairs of ``frames.bin`` (bench_ingest.make_messages)."""
    data, i, frames = path.read_bytes(), 0, []
    while i < len(data):
        tl, pl = struct.unpack(">HH", data[i : i + 4])
        i += 4
        frames.append((data[i : i + tl].decode(), data[i + tl : i + tl + pl]))
        i += tl + pl
    return frames


async def check_split(frames: Path, admin: object, sample: int = 2000) -> dict[str, float]:
    """CPU-µs per message of the parts of ingest's check, replayed one after the other on the
    same readings in this process, one thread (the drain measures the check as a whole): parse
    and the cheap checks, the key policy with ECDSA verify, the leaf packing, and the two hashes."""
    from meterchain.backend.devices.registry import KeyRegistry
    from meterchain.backend.ingest.checks import check_batch
    from meterchain.backend.store.leafdata import pack_leaf_data
    from meterchain.contract.ack import device_from_topic
    from meterchain.contract.merkle import leaf_hash
    from meterchain.contract.message import SignedReading, parse_message
    from meterchain.contract.policy import SIGNED_BY_DEVICE, Evidence, Statement

    registry = KeyRegistry()
    await registry.refresh(admin)  # type: ignore[arg-type]
    leaves = registry.snapshot()
    messages = read_frames(frames)[:sample]
    n = len(messages)

    def parse() -> list[SignedReading]:
        out = []
        for topic, payload in messages:
            signed = parse_message(payload)
            assert device_from_topic(topic) == signed.reading.device and leaves.get(signed.reading.device)
            out.append(signed)
        return out

    def timed(work: Callable[[], T]) -> tuple[T, float]:
        started = time.thread_time()
        result = work()
        return result, (time.thread_time() - started) / n * 1e6

    parsed, parse_us = timed(parse)
    def verify() -> None:
        for s in parsed:
            SIGNED_BY_DEVICE.verify(Evidence(Statement.of_reading(s), leaves[s.reading.device]))

    _, verify_us = timed(verify)
    _, pack_us = timed(lambda: [pack_leaf_data(p) for _, p in messages])
    _, hash_us = timed(lambda: [(hashlib.sha256(s.reading_bytes).digest(), leaf_hash(p))
                                for s, (_, p) in zip(parsed, messages, strict=True)])
    _, whole_us = timed(lambda: check_batch(messages, leaves, int(time.time())))
    return {"parse and checks": round(parse_us, 1), "verify (key policy + ECDSA)": round(verify_us, 1),
            "pack": round(pack_us, 1), "hashes": round(hash_us, 1), "check_batch, whole": round(whole_us, 1)}


async def _metric(port: int, name: str) -> float | None:
    """One unlabelled metric of a worker's ``/metrics``."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _stage_cpu(port: int) -> dict[str, float]:
    """The worker's CPU seconds per stage so far (``meterchain_ingest_stage_cpu_seconds``)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("meterchain_ingest_stage_cpu_seconds{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('stage="', 1)[1].split('"', 1)[0]] = float(value)
    return found


async def run(label: str, workers: int, group: str, n: int, devices: int,
              workdir: Path, check_processes: int | None = None) -> dict[str, object]:
    """One configuration; ``check_processes`` None: the worker's default."""
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
         "--client-id", f"bench-{i}", *(["--share-group", group] if group else []),
         *([] if check_processes is None else ["--check-processes", str(check_processes)])],
        stdout=subprocess.DEVNULL, stderr=(workdir / f"worker-{i}.log").open("wb"))
        for i, port in enumerate(ports)]
    try:
        deadline = time.monotonic() + 120  # a worker's start took 27-35 s at load 17-19
        for port in ports:
            while await _healthy(port) is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"a worker did not subscribe; see {workdir}/worker-*.log")
                await asyncio.sleep(0.1)
        # Until each worker's check processes answer: the drain, not their start, is measured.
        from meterchain.backend.config import BackendConfig
        expected = BackendConfig().check_processes if check_processes is None else check_processes
        for port in ports:
            while (await _metric(port, "meterchain_ingest_check_processes") or 0) < expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"a worker's check processes did not start; see {workdir}/worker-*.log")
                await asyncio.sleep(0.1)
        cpu_before = [await _stage_cpu(port) for port in ports]
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)  # connected, not reading: the broker queues
        pub = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), str(frames)],
            capture_output=True, text=True, check=True)
        published_in = float(pub.stdout.split()[1]) - float(pub.stdout.split()[0])
        started, own_cpu = time.perf_counter(), time.process_time()
        children = [_tree_cpu(proc.pid) for proc in procs]
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
        while await admin.reading_count() < n or await admin.pending_count():
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu  # the sealer, and this loop's polls
        worker_cpu = sum(_tree_cpu(proc.pid) - c for proc, c in zip(procs, children, strict=True))
        stages: dict[str, float] = {}
        for port, before in zip(ports, cpu_before, strict=True):
            for stage, value in (await _stage_cpu(port)).items():
                stages[stage] = stages.get(stage, 0.0) + value - before.get(stage, 0.0)
        split = await check_split(frames, admin)
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
            "committed_sealed_per_s": round(n / elapsed), "stored_per_worker": shares,
            "check_processes": check_processes,
            "cpu_us_per_message": {**{k: round(v / n * 1e6, 1) for k, v in stages.items()},
                                   "worker processes, all": round(worker_cpu / n * 1e6, 1),
                                   "seal (bench process: sealer + polls)": round(own_cpu / n * 1e6, 1)},
            "check_replayed_cpu_us_per_message": split}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (the check processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(_tree_cpu(int(child)) for child in children)


async def receive_only(group: str, n: int, devices: int, workdir: Path, protocol: str = "",
                       client: str = "aiomqtt") -> int:
    """A bare subscriber's rate over the same kind of backlog (paused while it is published);
    ``protocol`` "5" makes a plain subscriber speak MQTT 5 (a share group does). ``client``
    "paho": paho's own loop instead of aiomqtt's (MQTT 3.1.1, plain only)."""
    if client == "paho" and (group or protocol):
        raise ValueError("the paho receiver is plain MQTT 3.1.1 only")
    from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

    workdir.mkdir(parents=True)
    broker = await start_mosquitto(find_mosquitto() or "mosquitto", workdir=workdir / "broker")
    frames = workdir / "frames.bin"
    make_messages(frames, n, devices)
    script = PAHO_RECEIVER if client == "paho" else RECEIVER
    proc = subprocess.Popen([sys.executable, "-c", script, group, broker.host, str(broker.port),
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


async def main_async(n: int, devices: int, repeat: int, check_processes: list[int]) -> None:
    results: dict[str, list[int]] = {}
    configs: list[tuple[str, int, str, int | None]] = [(*c, None) for c in CONFIGS]
    if check_processes:  # the default deployment with each count of check processes instead
        label, workers, group = CONFIGS[0]
        configs = [(f"{label}, {p} check processes", workers, group, p) for p in check_processes]
    with tempfile.TemporaryDirectory(prefix="mc-bench-scale-") as tmp:
        for r in range(repeat):
            for i, (label, workers, group, processes) in enumerate(configs):
                row = await run(label, workers, group, n, devices, Path(tmp) / f"{r}-{i}",
                                check_processes=processes)
                print(json.dumps(row), flush=True)
                rate = int(row["committed_sealed_per_s"])  # type: ignore[call-overload]
                results.setdefault(label, []).append(rate)
            for j, (label, group) in enumerate((("bare aiomqtt, MQTT 3.1.1", ""),
                                                 ("bare aiomqtt, MQTT 5 share group", "bench"))):
                rate = await receive_only(group, n, devices, Path(tmp) / f"{r}-bare-{j}")
                print(json.dumps({"config": label, "messages": n, "received_per_s": rate}))
                results.setdefault(label, []).append(rate)
    base = max(results[configs[0][0]])
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
    parser.add_argument("--check-processes", default="",
                        help="e.g. 0,1,2: only one plain worker, with each count of check processes")
    args = parser.parse_args()
    counts = [int(x) for x in args.check_processes.split(",") if x]
    asyncio.run(main_async(args.messages, args.devices, args.repeat, counts))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
