"""Readings/s from MQTT to committed and sealed, beside a bare paho subscriber, same run.

One Mosquitto on loopback; a paho publisher in its own process sends N signed readings (QoS 1,
bounded in flight); a bare paho subscriber in another process only counts them; this process runs
the backend's ingest and sealer. Both rates are N / (time from the first publish to the last
message received, resp. committed AND sealed).

    .venv/bin/python bench/bench_ingest.py --messages 20000 --devices 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBSCRIBER = r"""
import sys, time, paho.mqtt.client as mqtt
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
got = 0; last = 0.0
def on_message(c, u, m):
    global got, last
    got += 1; last = time.time()
def on_connect(c, u, f, rc, p=None):
    c.subscribe("meterchain/v1/+/readings", qos=1)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-paho", clean_session=True)
c.on_message = on_message; c.on_connect = on_connect
c.on_subscribe = lambda *a: print("ready", flush=True)
c.connect(host, port); c.loop_start()
deadline = time.time() + 300
while got < n and time.time() < deadline:
    time.sleep(0.01)
c.loop_stop(); print(f"{got} {last}", flush=True)
"""

PUBLISHER = r"""
import sys, time, struct, paho.mqtt.client as mqtt
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
frames = []
data = open(path, "rb").read(); i = 0
while i < len(data):
    tl, pl = struct.unpack(">HH", data[i:i+4]); i += 4
    frames.append((data[i:i+tl].decode(), data[i+tl:i+tl+pl])); i += tl + pl
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_inflight_messages_set(1000); c.connect(host, port); c.loop_start()
start = time.time(); window = []
for topic, payload in frames:
    window.append(c.publish(topic, payload, qos=1))
    if len(window) >= 1000:  # bound what is outstanding (paho stalls at 65,535 otherwise)
        window.pop(0).wait_for_publish()
for info in window: info.wait_for_publish()
print(f"{start} {time.time()}", flush=True); c.loop_stop(); c.disconnect()
"""


def make_messages(path: Path, n: int, devices: int) -> list[tuple[str, bytes]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests.support
    from tests.support.backend import Gateway  # the test helper that signs contract readings

    gateways = [Gateway(f"gw-{d:03d}") for d in range(devices)]
    frames = []
    with path.open("wb") as out:
        for i in range(n):
            gw = gateways[i % devices]
            topic, payload = gw.message(i // devices + 1)
            out.write(struct.pack(">HH", len(topic), len(payload)) + topic.encode() + payload)
            frames.append((topic, payload))
    return gateways  # type: ignore[return-value]


async def setup(n: int, devices: int, workdir: Path):  # type: ignore[no-untyped-def]
    """A Mosquitto, ``n`` signed readings of ``devices`` gateways in ``frames.bin``, a database
    with them enrolled, and a sealer on it (not running yet)."""
    from meterchain.backend.devices.registry import enrol
    from meterchain.backend.log.sealer import Sealer
    from meterchain.backend.store import open_store
    from meterchain.contract.note import NoteSigner
    from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("this bench needs Mosquitto")
    broker = await start_mosquitto(binary, workdir=workdir / "broker")
    frames = workdir / "frames.bin"
    gateways = make_messages(frames, n, devices)
    db = workdir / "bench.db"
    admin = await open_store(db)
    for gw in gateways:
        await enrol(admin, gw.device, gw.public_key, int(time.time()))
    sealer = Sealer(await open_store(db), NoteSigner.generate("bench.example/log"),
                    interval=0.5, max_leaves=10_000)
    return broker, frames, db, admin, sealer


async def run(n: int, devices: int, workdir: Path) -> dict[str, float]:
    from meterchain.backend.ingest.worker import Ingest
    from meterchain.backend.store import open_store

    broker, frames, db, admin, sealer = await setup(n, devices, workdir)
    ingest = Ingest(await open_store(db), broker_url=broker.url, on_commit=sealer.notify)
    tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(sealer.run())]
    await asyncio.wait_for(ingest.connected.wait(), 10)
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, broker.host, str(broker.port), str(n)],
                           stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, broker.host, str(broker.port), str(frames)],
                           stdout=subprocess.PIPE, text=True)
    done_at = None
    while done_at is None:
        await asyncio.sleep(0.05)
        if await admin.reading_count() >= n and await admin.pending_count() == 0:
            done_at = time.time()
    pub_out, _ = await asyncio.to_thread(pub.communicate)
    sub_out, _ = await asyncio.to_thread(sub.communicate)
    start, _published = map(float, pub_out.split())
    got, last = sub_out.split()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ingest.close()
    for s in (admin, ingest.store, sealer.store):
        await s.close()
    await broker.stop()
    bare = int(got) / (float(last) - start)
    ours = n / (done_at - start)
    return {"messages": n, "devices": devices, "bare_paho_msgs_per_s": round(bare),
            "backend_committed_sealed_per_s": round(ours), "ratio": round(ours / bare, 3),
            "stored": ingest.stats["stored"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        print(json.dumps(asyncio.run(run(args.messages, args.devices, Path(tmp)))))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
