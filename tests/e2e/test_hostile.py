"""Hostile inputs against a real Mosquitto, the real ingest and real agents (issue 14).

An attacker publishes forged readings, forged and replayed acks, forged gap declarations and
floods of junk on the devices' topics, while the gateways' outboxes are deleted or corrupted at
random moments. Afterwards, for every device: stored ∪ rejected for good (each "conflict") ∪
declared gaps = {1..N}, N the highest sequence it signed; no forged reading is stored; every
ack an agent applied was signed by the control key. Once with a broker that lets anyone publish
(the backend and the agents must hold on their own), once with a per-device ACL (the attacker's
publishes never arrive). A seeded short run; ``MC_HOSTILE_SECONDS`` and ``MC_HOSTILE_SEED`` make
a longer one. The figures of each run are printed (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from meterchain.agent.acks import AckGuard, OpenedAck
from meterchain.agent.service import Agent
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.control_key import load_or_create_control_key
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.provisioning.tokens import mosquitto_password_hash
from meterchain.backend.store import open_store
from meterchain.backend.store.leafdata import unpack_leaf_data
from meterchain.contract.ack import Ack, ack_topic, readings_topic
from meterchain.contract.control import ACK_V2_TYPE, SignedAck, open_control
from meterchain.contract.gap import GapDeclaration
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.note import NoteSigner
from meterchain.contract.policy import verify_reading
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer
from meterchain.mqtt.broker import find_mosquitto, start_mosquitto

from tests.support.agent import FAST_BACKOFF, broker_client, start_gateway

SEED = int(os.environ.get("MC_HOSTILE_SEED", "14"))
SECONDS = float(os.environ.get("MC_HOSTILE_SECONDS", "10"))
DEVICES = ("gw-h1", "gw-h2")
ORIGIN = "hostile.test/log"


@dataclass
class Figures:
    """What one run did, for docs/reliability.md."""

    forged_readings: int = 0
    forged_acks: int = 0
    forged_gaps: int = 0
    junk: int = 0
    outbox_losses: Counter[str] = field(default_factory=Counter)
    acks_applied: int = 0
    acks_refused: Counter[str] = field(default_factory=Counter)
    devices: dict[str, dict[str, int]] = field(default_factory=dict)
    unauthenticated: dict[str, int] = field(default_factory=dict)
    gap_ranges: int = 0


@dataclass
class Site:
    devices: dict[str, object]  # device -> Gateway
    agents: dict[str, Agent]
    every_agent: list[Agent]
    tasks: dict[str, asyncio.Task[None]]
    figures: Figures
    applied: list[bytes]  # every ack payload an agent applied


async def _mosquitto(tmp_path: Path, acl: bool) -> tuple[object, dict[str, str]]:
    """Mosquitto; with ``acl``, a password per device and the backend, and the deploy ACL."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs Mosquitto")
    if not acl:
        return await start_mosquitto(binary, workdir=tmp_path / "broker"), {}
    workdir = tmp_path / "broker"
    workdir.mkdir()
    logins = {name: f"pw-{name}" for name in (*DEVICES, "backend")}
    (workdir / "passwd").write_text("".join(
        f"{name}:{mosquitto_password_hash(pw)}\n" for name, pw in logins.items()))
    (workdir / "acl").write_text(
        "user backend\ntopic readwrite meterchain/v1/#\n"
        "pattern write meterchain/v1/%u/readings\npattern write meterchain/v1/%u/ocmf\n"
        "pattern write meterchain/v1/%u/status\npattern write meterchain/v1/%u/telemetry\n"
        "pattern read meterchain/v1/%u/ack\n")
    broker = await start_mosquitto(binary, workdir=workdir, extra=[
        f"password_file {workdir / 'passwd'}", f"acl_file {workdir / 'acl'}",
        f"user {getpass.getuser()}"])
    return broker, logins


def _url(broker: object, user: str | None, logins: dict[str, str]) -> str:
    port = broker.port  # type: ignore[attr-defined]
    if user is None or user not in logins:
        return f"mqtt://127.0.0.1:{port}"
    return f"mqtt://{user}:{logins[user]}@127.0.0.1:{port}"


def _forged_reading(forger, device: str, seq: int) -> bytes:  # type: ignore[no-untyped-def]
    end = int(time.time()) // 900 * 900 + 900 * seq
    reading = Reading(device=device, key_id=key_id(forger.public_key_der), seq=seq,
                      meter="630001", start=end - 900, end=end,
                      registers={IMPORT_OBIS: Register(10**9, "Wh"), EXPORT_OBIS: Register(0, "Wh")})
    return sign_reading(reading, forger).to_cbor()


async def _attack(site: Site, url: str, rng: random.Random, stop: asyncio.Event,
                  genuine_acks: dict[str, list[bytes]]) -> None:
    """Forged readings, acks and gaps, floods, replays: until ``stop``."""
    forger = load_signer(generate_private_key_pem())
    fake_control = NoteSigner.generate("hostile.test/control")  # the real key's name, not its key
    figures = site.figures
    async with broker_client(url, f"attacker-{rng.random()}") as client:
        while not stop.is_set():
            device = rng.choice(DEVICES)
            try:  # the agent's next sequence, as an eavesdropper would guess it
                nxt = await site.agents[device].outbox.next_seq()  # type: ignore[union-attr]
            except Exception:  # that agent is restarting (its outbox closed, or not open yet)
                nxt = 1
            action = rng.random()
            if action < 0.35:  # the next sequence numbers, signed by another key
                for seq in range(nxt, nxt + rng.randint(1, 8)):
                    await client.publish(readings_topic(device), _forged_reading(forger, device, seq),
                                         qos=1)
                    figures.forged_readings += 1
            elif action < 0.6:  # acks: unsigned, a foreign control key, a replay; retained
                kind = rng.choice(("v1", "fake-key", "replay"))
                if kind == "v1":
                    payload = Ack(device, nxt + 1000).to_cbor()
                elif kind == "fake-key":
                    payload = SignedAck(device, nxt + rng.randint(0, 50), (), (),
                                        int(time.time())).sign([fake_control])
                else:
                    old = genuine_acks.get(device) or [Ack(device, 1).to_cbor()]
                    payload = rng.choice(old)
                await client.publish(ack_topic(device), payload, qos=1, retain=True)
                figures.forged_acks += 1
            elif action < 0.7:  # a gap declaration of the device's next sequences, forged
                decl = GapDeclaration(device, key_id(forger.public_key_der), nxt, nxt + 100,
                                      int(time.time()), "outbox-lost")
                await client.publish(readings_topic(device), decl.sign(forger).to_cbor(), qos=1)
                figures.forged_gaps += 1
            else:  # a flood of junk: bytes, oversize, truncated, on real and made-up topics
                for _ in range(rng.randint(20, 60)):
                    topic = readings_topic(rng.choice((*DEVICES, f"x{rng.randrange(10**6)}")))
                    size = rng.choice((0, 5, 300, 3000))
                    await client.publish(topic, rng.randbytes(size), qos=0)
                    figures.junk += 1
            await asyncio.sleep(rng.uniform(0.02, 0.15))


async def _listen_acks(url: str, genuine: dict[str, list[bytes]], stop: asyncio.Event) -> None:
    """Keep the backend's real acks, for the attacker's replays."""
    async with broker_client(url, "ack-listener") as client:
        await client.subscribe("meterchain/v1/+/ack", qos=1)
        async for message in client.messages:
            device = message.topic.value.split("/")[2]
            genuine.setdefault(device, []).append(bytes(message.payload))  # type: ignore[arg-type]
            if stop.is_set():
                return


async def _lose_outboxes(site: Site, rng: random.Random, stop: asyncio.Event) -> None:
    """Crash an agent, delete or corrupt its outbox, start it again; now and then."""
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        if stop.is_set():
            return
        device = rng.choice(DEVICES)
        task = site.tasks[device]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gateway = site.devices[device]
        path = gateway.config.outbox_path  # type: ignore[attr-defined]
        how = rng.choice(("delete", "corrupt", "keep"))
        if how == "delete":
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        elif how == "corrupt":
            for suffix in ("-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            data = bytearray(path.read_bytes())
            for _ in range(32):  # scribble over the header and pages
                at = rng.randrange(0, min(len(data), 4096))
                data[at] = rng.randrange(256)
            data[:16] = rng.randbytes(16)
            path.write_bytes(bytes(data))
        site.figures.outbox_losses[how] += 1
        _start_agent(site, device)


def _start_agent(site: Site, device: str) -> None:
    agent = site.devices[device].agent()  # type: ignore[attr-defined]
    site.agents[device] = agent
    site.every_agent.append(agent)
    site.tasks[device] = asyncio.create_task(agent.run())


async def _run(tmp_path: Path, *, acl: bool, seed: int, seconds: float) -> Figures:
    rng = random.Random(seed)
    broker, logins = await _mosquitto(tmp_path, acl)
    db = tmp_path / "mc.db"
    admin = await open_store(db)
    control = await load_or_create_control_key(tmp_path / "control.key", ORIGIN, admin, create=True)
    ingest = Ingest(await open_store(db), broker_url=_url(broker, "backend", logins),
                    control=control)
    applied: list[bytes] = []
    original_open = AckGuard.open

    def recording_open(self: AckGuard, payload: bytes, highest_signed: int) -> OpenedAck:
        opened = original_open(self, payload, highest_signed)
        applied.append(payload)  # reached only when the ack is applied
        return opened

    site = Site({}, {}, [], {}, Figures(), applied)
    stop = asyncio.Event()
    helpers: list[asyncio.Task[None]] = []
    AckGuard.open = recording_open  # type: ignore[method-assign]
    try:
        ingest_task = asyncio.create_task(ingest.run(backoff=FAST_BACKOFF))
        await asyncio.wait_for(ingest.connected.wait(), 60)
        for device in DEVICES:
            gateway = await start_gateway(tmp_path / device, _url(broker, device, logins),
                                          ack_timeout=2, control_key=str(control[0].verifier),
                                          device=device)
            await enrol(admin, device, gateway.spki, int(time.time()))
            site.devices[device] = gateway
            _start_agent(site, device)
        genuine: dict[str, list[bytes]] = {}
        attacker_url = _url(broker, None, logins)  # anonymous: the ACL gives it nothing
        helpers = [asyncio.create_task(_listen_acks(_url(broker, "backend", logins), genuine,
                                                    stop)),
                   asyncio.create_task(_attack(site, attacker_url, rng, stop, genuine)),
                   asyncio.create_task(_lose_outboxes(site, rng, stop))]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait(helpers[1:], timeout=60)  # stopping, not speed, is what is checked
        for helper in helpers[1:]:  # an attacker or loser that died early would prove nothing
            assert helper.done() and helper.exception() is None, helper
        for gateway in site.devices.values():  # the meters stop: the outboxes can drain
            await gateway.bus.stop()  # type: ignore[attr-defined]

        async def drained() -> bool:
            for device, agent in site.agents.items():
                if agent.outbox is None or await agent.outbox.depth() or await agent.outbox.gaps():
                    return False
                state = await admin.ack_state(device)
                if state.upto < await agent.outbox.next_seq() - 1:
                    return False
            return True

        deadline = time.monotonic() + 40
        while not await drained():
            assert time.monotonic() < deadline, "the outboxes did not drain"
            await asyncio.sleep(0.2)
        await _check(site, admin, control, acl)
        return site.figures
    finally:
        AckGuard.open = original_open  # type: ignore[method-assign]
        stop.set()
        for task in [*helpers, *site.tasks.values()]:
            task.cancel()
        await asyncio.gather(*helpers, *site.tasks.values(), return_exceptions=True)
        ingest_task.cancel()
        await asyncio.gather(ingest_task, return_exceptions=True)
        ingest.close()
        await ingest.store.close()
        await admin.close()
        await broker.stop()  # type: ignore[attr-defined]


async def _check(site: Site, store, control, acl: bool) -> None:  # type: ignore[no-untyped-def]
    figures = site.figures
    for device, agent in site.agents.items():
        n = await agent.outbox.next_seq() - 1  # type: ignore[union-attr]
        rows = await store._rows("SELECT seq, leaf_id FROM readings WHERE device = ?", (device,))
        stored = [r[0] for r in rows]
        assert len(stored) == len(set(stored)), "a sequence stored twice"
        rejected = {r[0]: r[1] for r in await store._rows(
            "SELECT seq, reason FROM rejections WHERE device = ? AND permanent = 1", (device,))}
        assert set(rejected.values()) <= {"conflict"}, rejected  # the only reason for good
        ranges = await store._rows("SELECT first, last FROM declared_gaps WHERE device = ?",
                                   (device,))
        declared = {s for first, last in ranges for s in range(first, last + 1)}
        site.figures.gap_ranges += len(ranges)
        accounted = set(stored) | set(rejected) | declared
        assert set(range(1, n + 1)) <= accounted, sorted(set(range(1, n + 1)) - accounted)[:20]
        assert max(accounted) <= max(n, max(declared, default=0))
        # Nothing forged is stored: every reading verifies with the device's own key.
        spki = site.devices[device].spki  # type: ignore[attr-defined]
        for _, leaf_id in rows:
            data = await store._rows("SELECT data FROM leaves WHERE id = ?", (leaf_id,))
            verify_reading(parse_message(unpack_leaf_data(data[0][0], leaf_id)), spki)
        # An interval is stored once (one (meter, end) per device).
        ends = await store._rows('SELECT meter, "end" FROM readings WHERE device = ?', (device,))
        assert len(ends) == len(set(map(tuple, ends)))
        junk = {r[1] for r in await store.rejection_minutes(device)}
        if acl:  # the broker refused every publish of the attacker
            assert not junk, junk
        else:  # the attacker's junk reached the backend and was counted, never acked
            assert "key-id" in junk, junk
        figures.devices[device] = {
            "signed_N": n, "stored": len(stored), "conflicts": len(rejected),
            "declared": len(declared), "declared_not_stored": len(declared - set(stored)),
            "quarantined": await agent.outbox.quarantine_count(),  # type: ignore[union-attr]
        }
    for _, reason, _, count, _ in await store.rejection_minutes():
        figures.unauthenticated[reason] = figures.unauthenticated.get(reason, 0) + count
    for agent in site.every_agent:
        for metric in agent.metrics.acks_refused.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    figures.acks_refused[sample.labels["reason"]] += int(sample.value)
    # Every ack an agent applied was signed by the control key.
    for payload in site.applied:
        body, _ = open_control(payload, ACK_V2_TYPE, [control[0].verifier])
        SignedAck.from_body(body)
    figures.acks_applied = len(site.applied)


def _report(name: str, seed: int, figures: Figures) -> None:
    print(f"\nhostile run {name}: seed {seed}, {SECONDS:.0f} s: " + json.dumps({
        "forged_readings": figures.forged_readings, "forged_acks": figures.forged_acks,
        "forged_gaps": figures.forged_gaps, "junk": figures.junk,
        "outbox_losses": dict(figures.outbox_losses), "acks_applied": figures.acks_applied,
        "acks_refused": dict(figures.acks_refused), "devices": figures.devices,
        "unauthenticated": figures.unauthenticated, "gap_ranges": figures.gap_ranges,
    }, sort_keys=True))


@pytest.mark.timeout(int(3 * SECONDS) + 90)  # the attack, the drain, a busy machine
@pytest.mark.parametrize("acl", [False, True], ids=["open-broker", "broker-acl"])
async def test_hostile_inputs_punch_no_holes(tmp_path: Path, acl: bool) -> None:
    figures = await _run(tmp_path, acl=acl, seed=SEED + int(acl), seconds=SECONDS)
    _report("broker-acl" if acl else "open-broker", SEED + int(acl), figures)
    assert figures.forged_readings and figures.forged_acks and figures.junk
    assert figures.acks_applied > 0
    if not acl:  # the forged acks reached the agents, which refused them
        assert figures.acks_refused["signature"] + figures.acks_refused["encoding"] > 0
    assert sum(figures.outbox_losses.values()) >= 2
    # Only the gateways' own declarations were logged: one per lost outbox at most.
    assert figures.gap_ranges <= figures.outbox_losses["delete"] + figures.outbox_losses["corrupt"]
