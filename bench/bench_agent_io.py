"""Bytes a gateway agent writes to disk per reading (issue 20, goal ≤ 1 KB per reading).

One Mosquitto on loopback, one emulated Modbus bus with ``--meters`` SDM630 meters on one pty and
a small acking backend (it acks each batch it receives, retained and signed, as ingest does) run
in this process; the agent runs in a child process with an accelerated clock (``--interval`` s
of gateway time per real second), so a few minutes of real time cover hours of polling. After a
warm-up of two cycles the child reads its own ``/proc/self/io`` (``write_bytes``: what it sent
to the block layer, page by page; ``wchar``: what it passed to write(2)), polls ``--cycles``
more intervals, waits until the backend acked everything, and reads it again. Bytes per reading
are the difference over the readings signed in between; the outbox's files are measured too.

    .venv/bin/python bench/bench_agent_io.py --meters 10 --cycles 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterchain.contract.note import NoteSigner
    from meterchain.mqtt import BrokerUrl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.support


def proc_io() -> dict[str, int]:
    """This process's I/O counters (all threads): write_bytes, wchar, syscw, ..."""
    return {k: int(v) for k, v in (line.split(": ") for line in
                                   Path("/proc/self/io").read_text().splitlines())}


def files_size(outbox: Path) -> int:
    return sum(p.stat().st_size for p in outbox.parent.glob(outbox.name + "*") if p.is_file())


async def child(config_path: Path, cycles: int, interval: int, settings: dict[str, object]
                ) -> dict[str, object]:
    """The agent under measure (in its own process, so /proc/self/io is the agent's)."""
    if "OUTBOX_FROM" in settings:  # the outbox module of another commit, for a before/after
        _load_outbox_from(str(settings["OUTBOX_FROM"]))
    from meterchain.agent import outbox as outbox_module
    from meterchain.agent.config import load_config
    from meterchain.agent.service import Agent
    from meterchain.mqtt import Backoff

    from tests.support.agent import AcceleratedClock

    for name, value in settings.items():  # the outbox's SQLite settings under comparison
        if name == "OUTBOX_FROM":
            continue
        setattr(outbox_module, name, value)
    config = load_config(config_path)
    clock = AcceleratedClock(time.time(), float(interval))  # one interval per real second
    agent = Agent(config, clock=clock, backoff=Backoff(initial=0.1, maximum=1.0))
    task = asyncio.create_task(agent.run())

    async def until(predicate: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    await until(lambda: agent.poller is not None and agent.poller.cycles >= 2, 60, "warm-up")
    assert agent.outbox is not None and agent.poller is not None
    outbox = agent.outbox
    await until(lambda: agent.publisher is not None and agent.publisher.connected.is_set(), 60,
                "the broker")
    first_seq = await outbox.next_seq()
    poller = agent.poller
    start_cycle = poller.cycles
    before, size_before = proc_io(), files_size(config.outbox_path)
    began = time.monotonic()
    await until(lambda: poller.cycles >= start_cycle + cycles, cycles * 3 + 60, "the cycles")
    signed = await outbox.next_seq() - first_seq
    depth_at_end = await outbox.depth()
    # The acks of the last cycle: their deletions are part of a reading's cost.
    deadline = time.monotonic() + 30
    while await outbox.depth() > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    after, size_after = proc_io(), files_size(config.outbox_path)
    depth_after_acks = await outbox.depth()
    seconds = time.monotonic() - began
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {
        "readings": signed, "cycles": poller.cycles - start_cycle, "seconds": seconds,
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "wchar": after["wchar"] - before["wchar"], "syscw": after["syscw"] - before["syscw"],
        "outbox_files_before": size_before, "outbox_files_after": size_after,
        "depth_at_end": depth_at_end, "depth_after_acks": depth_after_acks,
    }


def _load_outbox_from(revision: str) -> None:
    """Import agent/outbox.py as it was at ``revision`` in place of today's (same API)."""
    import importlib.util
    import types

    source = subprocess.run(["git", "show", f"{revision}:agent/outbox.py"], cwd=HERE.parent,
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("meterchain.agent.outbox", loader=None)
    assert spec is not None
    module = types.ModuleType(spec.name)
    module.__spec__ = spec
    sys.modules[spec.name] = module
    exec(compile(source, f"{revision}:agent/outbox.py", "exec"), module.__dict__)
    if not hasattr(module.Outbox, "first_own_seq"):
        module.Outbox.first_own_seq = 1  # read by today's publisher; every send was persisted


class AckingBackend:
    """Acks what it receives, one retained signed ack per batch per device (as ingest does)."""

    def __init__(self, url: BrokerUrl, control: NoteSigner) -> None:
        self.url, self.control = url, control
        self.seen: dict[str, set[int]] = {}

    def upto(self, device: str) -> int:
        seen, upto = self.seen.get(device, set()), 0
        while upto + 1 in seen:
            upto += 1
        return upto

    async def run(self) -> None:
        from meterchain.contract.ack import ack_topic, device_from_topic
        from meterchain.contract.control import SignedAck
        from meterchain.contract.message import parse_message
        from meterchain.mqtt import connect

        async with connect(self.url, client_id="bench-backend") as conn:
            await conn.subscribe("meterchain/v1/+/readings", qos=1)
            while True:
                devices: set[str] = set()
                for message in await conn.receive(500):
                    device = device_from_topic(message.topic)
                    if device is None:
                        continue
                    self.seen.setdefault(device, set()).add(parse_message(message.payload).reading.seq)
                    devices.add(device)
                for device in devices:
                    ack = SignedAck(device, self.upto(device), time=int(time.time()))
                    await conn.publish(ack_topic(device), ack.sign([self.control]), qos=1,
                                       retain=True)


async def parent(meters: int, cycles: int, interval: int, keep: Path | None,
                 settings: dict[str, object]) -> dict[str, object]:
    from meterchain.agent.cli import write_private_key
    from meterchain.bridge.modbus import EmulatedMeter, ModbusBusEmulator
    from meterchain.contract.note import NoteSigner
    from meterchain.contract.signing import generate_private_key_pem
    from meterchain.mqtt import BrokerUrl
    from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("this bench needs Mosquitto")
    control = NoteSigner.generate("bench.example/control")
    with tempfile.TemporaryDirectory(prefix="mc-bench-io-", dir=keep) as tmp:
        work = Path(tmp)
        broker = await start_mosquitto(binary, workdir=work / "broker")
        bus = ModbusBusEmulator([EmulatedMeter("sdm630", i + 1, 9600, 21_000_000 + i)
                                 for i in range(meters)], wire_delay=False)
        pty = await bus.start()
        url = f"mqtt://{broker.host}:{broker.port}"
        backend = asyncio.create_task(AckingBackend(BrokerUrl.parse(url), control).run())
        write_private_key(work / "device.key", generate_private_key_pem(), force=False)
        config = work / "agent.toml"
        config.write_text(
            f'device_id = "gw-bench-io"\nkey_path = "device.key"\nbackend_url = "http://127.0.0.1:9"\n'
            f'outbox_path = "{work / "outbox.sqlite"}"\ninterval_seconds = {interval}\n'
            f'control_key = "{control.verifier}"\n\n[broker]\nurl = "{url}"\n'
            + "".join(f'\n[[meters]]\nname = "m{i + 1}"\nmodel = "sdm630"\nport = "{pty}"\n'
                      f"baudrate = 9600\nmodbus_id = {i + 1}\n" for i in range(meters)))
        load_start = os.getloadavg()
        try:
            out = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, str(Path(__file__).resolve()), "--child", str(config),
                 "--cycles", str(cycles), "--interval", str(interval),
                 "--settings", json.dumps(settings)],
                cwd=work, capture_output=True, text=True, check=False)
        finally:
            backend.cancel()
            await asyncio.gather(backend, return_exceptions=True)
            await bus.stop()
            await broker.stop()
        if out.returncode != 0:
            raise SystemExit(f"the agent failed ({out.returncode}): {out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    readings = max(1, int(result["readings"]))
    result.update(
        meters=meters, interval_s=interval, bytes_per_reading=result["write_bytes"] / readings,
        wchar_per_reading=result["wchar"] / readings, load_start=load_start, load_end=os.getloadavg(),
        settings=settings, command=f"bench/bench_agent_io.py --meters {meters} --cycles {cycles} "
        f"--interval {interval}" + "".join(f" --{k.lower().replace('_', '-')} {v}" for k, v in settings.items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=300,
                        help="poll cycles measured (enough for several WAL checkpoints)")
    parser.add_argument("--interval", type=int, default=60,
                        help="the agent's interval_seconds (one interval per real second)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the outbox lives (default: the temp folder; must not be tmpfs)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), help="outbox PRAGMA synchronous")
    parser.add_argument("--page-size", type=int, help="page size of the new outbox")
    parser.add_argument("--wal-autocheckpoint", type=int, help="WAL pages between checkpoints")
    parser.add_argument("--purge-rows", type=int, help="acked rows deleted in one go")
    parser.add_argument("--outbox-from", help="a git revision: its agent/outbox.py instead of today's")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args.child, args.cycles, args.interval,
                                           json.loads(args.settings)))))
        return
    settings = {name.upper(): getattr(args, name) for name in
                ("synchronous", "page_size", "wal_autocheckpoint", "purge_rows", "outbox_from")
                if getattr(args, name) is not None}
    r = asyncio.run(parent(args.meters, args.cycles, args.interval, args.dir, settings))
    if args.json:
        print(json.dumps(r))
        return
    print(f"load average {r['load_start'][0]:.2f} -> {r['load_end'][0]:.2f}")  # type: ignore[index]
    print(f"{r['command']}\n{r['readings']} readings in {r['cycles']} cycles ({r['seconds']:.0f} s): "
          f"write_bytes {r['bytes_per_reading']:,.0f} B per reading, wchar {r['wchar_per_reading']:,.0f} B "
          f"per reading, {r['syscw']} write calls; outbox files {r['outbox_files_before']:,} -> "
          f"{r['outbox_files_after']:,} B; depth at the end {r['depth_at_end']}")


if __name__ == "__main__":
    main()
