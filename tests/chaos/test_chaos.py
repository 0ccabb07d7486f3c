"""Chaos (issue 18): real processes — agents, the backend (ingest + sealer), Mosquitto, emulated
meters — and the faults of the field: kill -9 of each process, a broker outage, a silent network
cut (a loopback TCP proxy that stops forwarding), clock jumps through the agents' clocks.

The oracle does not ask the system: a subscriber of its own with a persistent session records
every publish on the readings topics; the database is read with plain SQL. After recovery, for
every device: stored ∪ rejected for good ∪ declared gaps ⊇ {1..N} (N the highest sequence seen
signed), nothing stored twice (by seq or by (meter, end)), every checkpoint consistent with
every earlier one (the audit rebuilds each), resend amplification ≤ 1.5 publishes per reading.

A seeded short run in the default test run; ``MC_CHAOS_LONG=1`` runs many more faults
(``MC_CHAOS_FAULTS``, ``MC_CHAOS_SEED``). Each run prints its figures (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.control_key import load_or_create_control_key
from meterchain.backend.log.audit import audit
from meterchain.backend.store import open_store
from meterchain.contract.gap import is_gap_message
from meterchain.contract.message import parse_message
from meterchain.contract.note import NoteSigner
from meterchain.mqtt.broker import find_mosquitto, free_port, start_mosquitto

from tests.support.agent import start_gateway

LONG = os.environ.get("MC_CHAOS_LONG") == "1"
SEED = int(os.environ.get("MC_CHAOS_SEED", "18"))
FAULTS = int(os.environ.get("MC_CHAOS_FAULTS", "40" if LONG else "5"))
DEVICES = ("gw-c1", "gw-c2")
ORIGIN = "chaos.test/log"
HERE = Path(__file__).parent

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(3600 if LONG else 240)]


class Proxy:
    """A loopback TCP proxy; ``cut()`` stops forwarding without closing anything (a silent
    network cut), ``heal()`` drops what was cut (as a NAT that forgot them) and forwards again."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self.forwarding = asyncio.Event()
        self.forwarding.set()
        self.pipes: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self.pipes += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self.forwarding.wait()
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        self.forwarding.clear()

    def heal(self) -> None:
        for pipe in self.pipes:
            pipe.transport.abort()
        self.pipes.clear()
        self.forwarding.set()

    async def stop(self) -> None:
        self.heal()
        if self.server is not None:
            self.server.close()


@dataclass
class Figures:
    faults: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=dict)
    publishes: Counter[tuple[str, int]] = field(default_factory=Counter)
    gaps_seen: int = 0
    devices: dict[str, dict[str, int]] = field(default_factory=dict)


async def _record(port: int, figures: Figures, stop: asyncio.Event) -> None:
    """The oracle's subscriber: persistent session, every publish on the readings topics."""
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="chaos-oracle",
                                      clean_session=False, timeout=5) as client:
                await client.subscribe("meterchain/v1/+/readings", qos=1)
                async for message in client.messages:
                    payload = bytes(message.payload)  # type: ignore[arg-type]
                    if is_gap_message(payload):
                        figures.gaps_seen += 1
                        continue
                    reading = parse_message(payload).reading
                    figures.publishes[(reading.device, reading.seq)] += 1
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


class Site:
    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp, self.rng = tmp, rng
        self.db = tmp / "mc.db"
        self.broker_port = free_port()
        self.broker_dir = tmp / "broker"
        self.broker: object | None = None
        self.backend: asyncio.subprocess.Process | None = None
        self.agents: dict[str, asyncio.subprocess.Process] = {}
        self.gateways: dict[str, object] = {}
        self.proxy = Proxy(self.broker_port)

    async def start_broker(self) -> None:
        binary = find_mosquitto()
        assert binary is not None
        self.broker = await start_mosquitto(binary, port=self.broker_port, workdir=self.broker_dir)

    def kill_broker(self) -> None:
        self.broker.process.kill()  # type: ignore[attr-defined]
        self.broker.process.wait()  # type: ignore[attr-defined]

    async def start_backend(self) -> None:
        self.backend = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "chaos_backend.py"), str(self.db), str(self.tmp / "log.key"),
            str(self.tmp / "control.key"), ORIGIN, f"mqtt://127.0.0.1:{self.broker_port}",
            stdout=asyncio.subprocess.PIPE, stderr=open(self.tmp / "backend.log", "ab"))  # noqa: SIM115
        assert self.backend.stdout is not None
        line = await asyncio.wait_for(self.backend.stdout.readline(), 60)
        assert line == b"ready\n", line

    async def start_agent(self, device: str) -> None:
        self.agents[device] = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / "chaos_agent.py"), str(self.tmp / device / "agent.toml"),
            str(self.tmp / device / "clock-offset"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=open(self.tmp / device / "agent.log", "ab"))  # noqa: SIM115

    @staticmethod
    async def kill(process: asyncio.subprocess.Process | None) -> None:
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    def signed(self, device: str) -> int:
        """The highest sequence the device's outbox allocated (read with plain SQL)."""
        path = self.tmp / device / "outbox.sqlite"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return int(db.execute("SELECT next_seq FROM state").fetchone()[0]) - 1
        except (sqlite3.OperationalError, TypeError):  # not made yet
            return 0

    def upto(self, device: str) -> int:
        """The backend's `upto` for the device, from its tables: contiguous done from 1."""
        with contextlib.closing(sqlite3.connect(self.db)) as db:
            done = {r[0] for r in db.execute("SELECT seq FROM readings WHERE device = ?", (device,))}
            done |= {r[0] for r in db.execute(
                "SELECT seq FROM rejections WHERE device = ? AND permanent = 1", (device,))}
            for first, last in db.execute("SELECT first, last FROM declared_gaps WHERE device = ?",
                                          (device,)):
                done |= set(range(first, last + 1))
        upto = 0
        while upto + 1 in done:
            upto += 1
        return upto

    async def caught_up(self, what: str, figures: Figures, timeout: float = 90,
                        live: bool = True) -> None:
        """Wait until every device's backend state covers what it had signed when asked and,
        if ``live``, until every agent has signed more."""
        began = time.monotonic()
        targets = {device: self.signed(device) for device in DEVICES}
        while any(self.upto(d) < n for d, n in targets.items()):
            assert time.monotonic() - began < timeout, f"no recovery after {what}: {targets}"
            await asyncio.sleep(0.1)
        if live:  # and every agent signs again (a clock gone back must not stall one)
            while any(self.signed(d) <= n for d, n in targets.items()):
                assert time.monotonic() - began < timeout, f"nothing signed after {what}"
                await asyncio.sleep(0.1)
        figures.recovery.setdefault(what, []).append(round(time.monotonic() - began, 2))


async def _fault(site: Site, kind: str, figures: Figures) -> None:
    rng = site.rng
    figures.faults[kind] += 1
    if kind == "kill-backend":
        await site.kill(site.backend)
        await asyncio.sleep(rng.uniform(0.5, 3))
        await site.start_backend()
    elif kind == "kill-agent":
        device = rng.choice(DEVICES)
        await site.kill(site.agents[device])
        await asyncio.sleep(rng.uniform(0.2, 2))
        await site.start_agent(device)
    elif kind == "broker-outage":
        site.kill_broker()
        await asyncio.sleep(rng.uniform(1, 4))
        await site.start_broker()
    elif kind == "network-cut":
        site.proxy.cut()
        await asyncio.sleep(rng.uniform(2, 6))
        site.proxy.heal()
    elif kind == "clock-jump":
        device = rng.choice(DEVICES)
        offset = site.tmp / device / "clock-offset"
        offset.write_text(str(rng.choice([3600, 86_400, -3600])))
        await asyncio.sleep(rng.uniform(2, 5))
        offset.write_text("0")
    await site.caught_up(kind, figures)


KINDS = ("kill-backend", "kill-agent", "broker-outage", "network-cut", "clock-jump")


async def _run(tmp_path: Path, seed: int, faults: int) -> Figures:
    if find_mosquitto() is None:
        pytest.skip("the chaos suite needs Mosquitto (kill -9 and restart on one port)")
    rng = random.Random(seed)
    site = Site(tmp_path, rng)
    figures = Figures()
    stop = asyncio.Event()
    await site.start_broker()
    await site.proxy.start()
    admin = await open_store(site.db)
    log_key = NoteSigner.generate(ORIGIN)
    (tmp_path / "log.key").write_text(str(log_key) + "\n")
    control = await load_or_create_control_key(tmp_path / "control.key", ORIGIN, admin, create=True)
    oracle = asyncio.create_task(_record(site.broker_port, figures, stop))
    try:
        for device in DEVICES:
            gateway = await start_gateway(tmp_path / device, f"mqtt://127.0.0.1:{site.proxy.port}",
                                          ack_timeout=2, control_key=str(control[0].verifier),
                                          device=device)
            (tmp_path / device / "clock-offset").write_text("0")
            await enrol(admin, device, gateway.spki, int(time.time()))
            site.gateways[device] = gateway
        await site.start_backend()
        for device in DEVICES:
            await site.start_agent(device)
        await asyncio.sleep(3)
        await site.caught_up("start", figures)
        # Every kind once, then a seeded mix.
        kinds = list(KINDS) + [rng.choice(KINDS) for _ in range(max(0, faults - len(KINDS)))]
        for kind in kinds[:max(faults, len(KINDS))]:
            await asyncio.sleep(rng.uniform(0.5, 2))
            await _fault(site, kind, figures)
        for gateway in site.gateways.values():  # the meters stop: everything drains
            await gateway.bus.stop()  # type: ignore[attr-defined]
        await asyncio.sleep(1.5)
        await site.caught_up("drain", figures, live=False)
        await site.kill(site.backend)
        for process in site.agents.values():
            await site.kill(process)
        await _check(site, admin, log_key, figures)
        return figures
    finally:
        stop.set()
        oracle.cancel()
        await asyncio.gather(oracle, return_exceptions=True)
        await site.kill(site.backend)
        for process in site.agents.values():
            await site.kill(process)
        await site.proxy.stop()
        with contextlib.suppress(Exception):
            site.kill_broker()
        await admin.close()


async def _check(site: Site, admin, log_key: NoteSigner, figures: Figures) -> None:  # type: ignore[no-untyped-def]
    with contextlib.closing(sqlite3.connect(site.db)) as db:
        for device in DEVICES:
            seen = [seq for d, seq in figures.publishes if d == device]
            n = max(max(seen, default=0), site.signed(device))
            stored = [r[0] for r in db.execute("SELECT seq FROM readings WHERE device = ?", (device,))]
            assert len(stored) == len(set(stored)), "a sequence stored twice"
            ends = db.execute('SELECT meter, "end" FROM readings WHERE device = ?', (device,)).fetchall()
            assert len(ends) == len(set(ends)), "an interval stored twice"
            rejected = dict(db.execute(
                "SELECT seq, reason FROM rejections WHERE device = ? AND permanent = 1", (device,)))
            assert set(rejected.values()) <= {"conflict", "future"}, rejected
            declared = {s for first, last in db.execute(
                "SELECT first, last FROM declared_gaps WHERE device = ?", (device,))
                for s in range(first, last + 1)}
            accounted = set(stored) | set(rejected) | declared
            missing = sorted(set(range(1, n + 1)) - accounted)
            assert not missing, f"{device}: sequences lost: {missing[:20]}"
            assert set(s for d, s in figures.publishes if d == device) <= accounted
            figures.devices[device] = {
                "signed": n, "stored": len(stored), "rejected_for_good": len(rejected),
                "future": sum(1 for r in rejected.values() if r == "future"),
                "declared": len(declared),
                "publishes": sum(c for (d, _), c in figures.publishes.items() if d == device),
            }
    report = await audit(admin, log_key.verifier)
    assert report.ok, report.findings[:5]
    readings = sum(d["signed"] for d in figures.devices.values())
    publishes = sum(figures.publishes.values())
    distinct = len(figures.publishes)
    assert distinct and publishes / distinct <= 1.5, (publishes, distinct)
    print(f"\nchaos run: seed {SEED}, {sum(figures.faults.values())} faults: " + json.dumps({
        "faults": dict(figures.faults), "readings": readings, "lost": 0,
        "publishes": publishes, "distinct_published": distinct,
        "amplification": round(publishes / distinct, 3),
        "duplicates_absorbed": publishes - distinct, "gap_messages": figures.gaps_seen,
        "recovery_s": figures.recovery, "devices": figures.devices,
        "checkpoints": report.checkpoints,
    }, sort_keys=True))


async def test_chaos_loses_nothing_and_stores_nothing_twice(tmp_path: Path) -> None:
    await _run(tmp_path, SEED, FAULTS)
