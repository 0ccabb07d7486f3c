"""Scale-out: several ingest workers in one MQTT 5 share group, one sealer, one SQLite store.

Against a real Mosquitto (the embedded amqtt broker has neither MQTT 5 nor shared
subscriptions: the tests that need them skip there, and one shows the clear refusal instead).
docs/backend.md, "Scale-out", has the argument these tests hold the code to: an ack never claims
a seq that is not committed, the stored ack never goes backwards, a stale cache costs at most a
redelivery, and two workers never both store one (device, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import httpx
import pytest
from meterchain.agent.cli import write_private_key
from meterchain.agent.config import load_config
from meterchain.agent.outbox import Outbox
from meterchain.agent.service import Agent
from meterchain.backend.config import BackendConfig, ConfigError
from meterchain.backend.devices.registry import enrol
from meterchain.backend.ingest.worker import AckTracker, Ingest, subscriptions
from meterchain.backend.service import SealerLock, ServiceError, serve
from meterchain.backend.store import Outcome, SqliteStore, open_store
from meterchain.bridge.modbus.emulator import EmulatedMeter, ModbusBusEmulator
from meterchain.contract.control import ACK_V2_TYPE, SignedAck, read_unverified
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import generate_private_key_pem, load_signer
from meterchain.mqtt.broker import RunningBroker, free_port, start_embedded

from tests.support.agent import FAST_BACKOFF, STOP_WITHIN, AcceleratedClock, wait_until
from tests.support.backend import Gateway
from tests.support.scale_out import needs_shared_subscriptions, serving

# Worker processes import the CLI (over 10 s at load 11) and start a check pool before they serve.
pytestmark = pytest.mark.timeout(300)
GROUP = "ingest"
QUIET = logging.getLogger("test_scale_out.mqtt")  # "N pending publish calls" is the point here
QUIET.setLevel(logging.ERROR)


def node(tmp_path: Path, broker: RunningBroker, roles: str, **kwargs: object) -> BackendConfig:
    """One serve() process's configuration on the shared database."""
    return BackendConfig(db=str(tmp_path / "mc.db"), broker=broker.url, http_port=free_port(),
                         log_key=str(tmp_path / "log.key"), origin="scale.example/log",
                         roles=roles, seal_interval=0.2, **kwargs)  # type: ignore[arg-type]


async def worker_stats(port: int) -> dict[str, int]:
    """What one worker's ingest did, from its /healthz (a process without the API role)."""
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"http://127.0.0.1:{port}/healthz")
    return answer.json()["ingest"]["stats"]


@dataclass
class AckWatch:
    """Every ack the backend publishes; each one is checked against the store when it arrives."""

    db: Path
    best: dict[str, int]
    claims_checked: int = 0

    async def run(self, url_broker: RunningBroker) -> None:
        store = await open_store(self.db)
        try:
            async with aiomqtt.Client(url_broker.host, url_broker.port,
                                      identifier="ack-watch") as client:
                await client.subscribe("meterchain/v1/+/ack", qos=1)
                async for message in client.messages:
                    payload = bytes(message.payload)  # type: ignore[arg-type]
                    ack = SignedAck.from_body(read_unverified(payload, ACK_V2_TYPE))
                    # Published after its commit: every seq it claims is stored by now.
                    for seq in range(self.best.get(ack.device, 0) + 1, ack.upto + 1):
                        assert await store.reading(ack.device, seq) is not None, (ack, seq)
                    self.claims_checked += 1
                    self.best[ack.device] = max(self.best.get(ack.device, 0), ack.upto)
        finally:
            await store.close()


async def enrolled(db: Path, gateways: list[Gateway]) -> SqliteStore:
    admin = await open_store(db)
    for gw in gateways:
        await enrol(admin, gw.device, gw.public_key, int(time.time()))
    return admin


async def assert_logged_once(admin: SqliteStore, devices: int, messages: list[bytes]) -> None:
    """Sealed: the tree holds the device leaves, the control-key leaf and each distinct reading
    exactly once."""
    size = devices + len(await admin.control_leaves()) + len(set(messages))
    await wait_until_async(lambda: _sealed(admin, size), 60, "sealing")
    hashes = await admin.leaf_hashes(0, size)
    assert len(hashes) == len(set(hashes))
    assert {leaf_hash(m) for m in messages} <= set(hashes)


async def _sealed(admin: SqliteStore, size: int) -> bool:
    checkpoint = await admin.latest_checkpoint()
    return await admin.pending_count() == 0 and checkpoint is not None and checkpoint.size == size


async def wait_until_async(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.1)


# --- three in-process workers, signed-message publishers ------------------------------------------


async def test_three_workers_store_every_reading_once_and_every_ack_covers_it(
    tmp_path: Path, broker: RunningBroker
) -> None:
    needs_shared_subscriptions(broker)
    gateways = [Gateway(f"gw-{d}") for d in range(6)]
    per_device = 50
    messages = [gw.message(seq) for seq in range(1, per_device + 1) for gw in gateways]
    # gw-0's messages twice in a row: the broker hands the copies to different workers, which
    # commit them concurrently; exactly one copy may be stored. The others' seqs are spread
    # over the workers once each: their acks reach 50 with no resend.
    sent = [m for m in messages for _ in range(2 if m[0] == gateways[0].topic else 1)]
    workers = [node(tmp_path, broker, "ingest", share_group=GROUP, client_id=f"w{i}")
               for i in range(3)]
    stats: list[dict[str, int]] = []

    async def all_handled() -> bool:
        stats[:] = [await worker_stats(w.http_port) for w in workers]
        return sum(s.get("stored", 0) + s.get("duplicate", 0) for s in stats) == len(sent)

    async with contextlib.AsyncExitStack() as stack:
        admin = await enrolled(tmp_path / "mc.db", gateways)
        stack.push_async_callback(admin.close)
        watch = AckWatch(tmp_path / "mc.db", {})
        stack.push_async_callback(cancelled, asyncio.create_task(watch.run(broker)))
        async with contextlib.AsyncExitStack() as nodes:
            await nodes.enter_async_context(serving(node(tmp_path, broker, "sealer")))
            for worker in workers:
                await nodes.enter_async_context(serving(worker))
            async with aiomqtt.Client(broker.host, broker.port, identifier="publisher",
                                      max_inflight_messages=200, logger=QUIET) as publisher:
                await asyncio.gather(*(publisher.publish(topic, payload, qos=1)
                                       for topic, payload in sent))
            await wait_until_async(lambda: _acked(watch, gateways, per_device), 60,
                                   "every device's ack at 50")
            await wait_until_async(all_handled, 60, "every copy handled")
        # The group shared the work: every worker handled readings (which copy is stored and
        # which is the duplicate depends on whose commit came first).
        assert all(s.get("stored", 0) + s.get("duplicate", 0) > 0 for s in stats), stats
        assert sum(s.get("stored", 0) for s in stats) == len(messages)
        assert sum(s.get("duplicate", 0) for s in stats) == per_device
        assert not any(k.startswith("rejected") or k == "conflict" for s in stats for k in s)
        for gw in gateways:
            assert await admin.reading_count(gw.device) == per_device
            assert all([await admin.reading(gw.device, s) for s in range(1, per_device + 1)])
            final = AckTracker()  # the stored upto and the done seqs above it
            await final.load(admin, [gw.device])
            assert final.ack(gw.device, 0).upto == per_device
        assert watch.claims_checked >= len(gateways)
        await assert_logged_once(admin, len(gateways), [payload for _, payload in messages])


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _acked(watch: AckWatch, gateways: list[Gateway], upto: int) -> bool:
    return all(watch.best.get(gw.device) == upto for gw in gateways)


# --- two worker processes, real agents, one worker killed mid-stream ------------------------------

SCALE = 3600.0  # simulated seconds per real second: a quarter-hour reading every 0.25 s per meter


async def start_gateway(tmp_path: Path, index: int, broker: RunningBroker,
                        clock: AcceleratedClock) -> tuple[Path, ModbusBusEmulator, bytes]:
    """A gateway with two emulated meters on one pty bus, on the accelerated clock."""
    device = f"gw-{index}"
    meters = [EmulatedMeter("sdm630", device_id=k, baudrate=115200,
                            serial_number=50_000 + 10 * index + k, clock=clock.now)
              for k in (1, 2)]
    bus = ModbusBusEmulator(meters, wire_delay=False)
    port = await bus.start()
    pem = generate_private_key_pem()
    write_private_key(tmp_path / f"{device}.key", pem, force=False)
    config = tmp_path / f"{device}.toml"
    tables = "".join(
        f'\n[[meters]]\nname = "m-{k}"\nmodel = "sdm630"\nport = "{port}"\nbaudrate = 115200\n'
        f"modbus_id = {k}\ntimeout_seconds = 0.2\n" for k in (1, 2))
    config.write_text(
        f'device_id = "{device}"\nkey_path = "{device}.key"\n'
        f'backend_url = "http://127.0.0.1:8000"\noutbox_path = "{device}-outbox.sqlite"\n'
        # Unacked readings are resent after 2 s of real time.
        f"interval_seconds = 900\nack_timeout_seconds = {int(2 * SCALE)}\ntelemetry_seconds = 0\n"
        f'\n[broker]\nurl = "{broker.url}"\n{tables}')
    return config, bus, load_signer(pem).public_key_der


def start_worker(tmp_path: Path, broker: RunningBroker, name: str, port: int) -> subprocess.Popen[bytes]:
    """``meterchain backend serve --role ingest --share-group …`` as its own process."""
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-c", "from meterchain.cli.main import main; main()", "backend", "serve",
         "--db", str(tmp_path / "mc.db"), "--broker", broker.url, "--role", "ingest",
         "--share-group", GROUP, "--client-id", name, "--http-port", str(port),
         "--control-key", str(tmp_path / "control.key")],  # the sealer's, made at its start
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_a_killed_worker_loses_nothing_the_agents_resend_to_the_others(
    tmp_path: Path, broker: RunningBroker
) -> None:
    needs_shared_subscriptions(broker)
    clock = AcceleratedClock(1_769_731_200.0, SCALE)
    gateways = [await start_gateway(tmp_path, i, broker, clock) for i in range(3)]
    configs = [load_config(path) for path, _, _ in gateways]
    admin = await open_store(tmp_path / "mc.db")
    for config, (_, _, spki) in zip(configs, gateways, strict=True):
        await enrol(admin, config.device_id, spki, int(clock.now()) - 3600)
    ports = [free_port(), free_port()]
    workers = [start_worker(tmp_path, broker, f"worker-{i}", ports[i]) for i in range(2)]
    agents = [Agent(config, clock=clock, backoff=FAST_BACKOFF, clock_sync=lambda: ClockSync.SYNCED)
              for config in configs]
    tasks: list[asyncio.Task[None]] = []
    try:
        async with serving(node(tmp_path, broker, "sealer")):
            for worker, port in zip(workers, ports, strict=True):
                await worker_ready(worker, port, tmp_path)
            tasks = [asyncio.create_task(agent.run()) for agent in agents]

            async def stored() -> int:
                return await admin.reading_count()

            await wait_until_async(lambda: _at_least(stored, 60), 60, "60 stored readings")
            killed = await worker_stats(ports[0])
            assert killed.get("stored", 0) > 0  # it took its share before it died
            workers[0].send_signal(signal.SIGKILL)  # mid-stream: no DISCONNECT, batch in flight
            workers[0].wait(30)
            before = await admin.reading_count()
            await wait_until_async(lambda: _at_least(stored, before + 60), 60,
                                   "60 more readings after the kill")
            signed = [int(a.metrics.readings_signed._value.get()) for a in agents]
            await wait_until(lambda: all(a.metrics.readings_acked._value.get() >= s
                                         for a, s in zip(agents, signed, strict=True)),
                             60, "acks for every reading signed by then")
            for task in tasks:
                task.cancel()
            await stopped(tasks)
            survivor = await worker_stats(ports[1])
            assert survivor.get("stored", 0) > 0
            # The survivor stops too before the count: readings the agents sent before they
            # stopped (acked or not) are stored up to then, none after.
            workers[1].terminate()
            workers[1].wait(60)
            for config in configs:
                async with await Outbox.open(config.outbox_path, config.device_id) as outbox:
                    assert await outbox.quarantined() == []
                    upto = await outbox.acked_upto()
                rows = [await admin.reading(config.device_id, s) for s in range(1, upto + 1)]
                assert all(rows), config.device_id  # every acked seq is stored
            assert sum([await admin.reading_count(c.device_id) for c in configs]) >= sum(signed)
            total = await admin.reading_count()
            # Every stored reading, acked or not (the agents may have stopped before the ack
            # of the last ones came): the sealer, still running, logs each once.
            messages = [row.message for c in configs
                        for row in await admin.readings(c.device_id, 0, 2**53 - 1, 1_000_000)]
            assert len(messages) == total
            await assert_logged_once(admin, len(configs), messages)
        logged = len(configs) + len(await admin.control_leaves()) + total
        assert (await admin.latest_checkpoint()).size == logged  # type: ignore[union-attr]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(10)
        for _, bus, _ in gateways:
            await bus.stop()
        await admin.close()


async def stopped(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for cancelled agents to stop; one that does not within STOP_WITHIN fails the test
    with every task's stack rather than hang it."""
    _, pending = await asyncio.wait(tasks, timeout=STOP_WITHIN)
    if pending:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        raise AssertionError(f"{len(pending)} agents did not stop within {STOP_WITHIN} s of their "
                             f"cancellation; the tasks' stacks:\n{stacks.getvalue()}")
    await asyncio.gather(*tasks, return_exceptions=True)


WORKER_START = 120.0  # a worker process's budget to import the CLI, start its pool and subscribe


async def worker_ready(worker: subprocess.Popen[bytes], port: int, tmp_path: Path) -> None:
    """Wait until a worker process answers /healthz (it has subscribed); fail with its log if it
    exits or takes longer than WORKER_START."""
    deadline = time.monotonic() + WORKER_START
    while not await _subscribed(port):
        if worker.poll() is not None or time.monotonic() > deadline:
            logs = {path.name: path.read_text(errors="replace")[-2000:]
                    for path in sorted(tmp_path.glob("worker-*.log"))}
            state = f"exited with {worker.returncode}" if worker.poll() is not None else (
                f"not subscribed after {WORKER_START} s")
            raise AssertionError(f"the ingest worker on port {port} {state}; logs: {logs}")
        await asyncio.sleep(0.2)


async def _subscribed(port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _at_least(count, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await count() >= n


# --- the store under two workers, no broker -------------------------------------------------------


async def test_stale_caches_never_claim_too_much_and_the_stored_ack_never_goes_back(
    tmp_path: Path,
) -> None:
    gw = Gateway("gw-1")
    admin = await enrolled(tmp_path / "mc.db", [gw])
    a = Ingest(await open_store(tmp_path / "mc.db"), share_group=GROUP)
    b = Ingest(await open_store(tmp_path / "mc.db"), share_group=GROUP)
    try:
        assert (await a.process([gw.message(1)])).acks[0].upto == 1
        # b caches the device now (upto 1) and stores 3: 2 is missing, so its ack stays at 1.
        assert (await b.process([gw.message(3)])).acks[0].upto == 1
        # a's cache has never seen 3; after its commit of 2 it reads the store and acks 3.
        assert (await a.process([gw.message(2)])).acks[0].upto == 3
        # The stored upto is a lower bound: 2, a's plan (its commit did not know of 3).
        assert (await admin.ack_state(gw.device)).upto == 2
        # b's cache (upto 1, 3 above) plans 1 for seq 5: the stored upto stays 2, not 1.
        assert (await b.process([gw.message(5)])).acks[0].upto == 3
        assert (await admin.ack_state(gw.device)).upto == 2
        # a resend (the agent saw no ack for 4 yet) arriving at either worker completes it.
        assert (await b.process([gw.message(4)])).acks[0].upto == 5
        assert (await a.process([gw.message(4)])).acks[0].upto == 5  # a duplicate, acked again
        assert a.stats["duplicate"] == 1
    finally:
        for ingest in (a, b):
            ingest.close()
            await ingest.store.close()
        await admin.close()


async def test_two_workers_committing_one_seq_at_once_store_it_once(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin = await enrolled(tmp_path / "mc.db", [gw])
    workers = [Ingest(await open_store(tmp_path / "mc.db"), share_group=GROUP) for _ in range(2)]
    try:
        for seq in range(1, 21):
            reports = await asyncio.gather(*(w.process([gw.message(seq)]) for w in workers))
            assert sorted((r.stored, r.duplicates) for r in reports) == [(0, 1), (1, 0)], seq
            assert max(r.acks[0].upto for r in reports) == seq  # the later commit sees both
        assert await admin.reading_count(gw.device) == 20
        assert sum(w.stats[Outcome.STORED.value] for w in workers) == 20
    finally:
        for w in workers:
            w.close()
            await w.store.close()
        await admin.close()


# --- configuration, the sealer guard, a broker without MQTT 5 -------------------------------------


def test_roles_share_group_and_worker_client_ids(tmp_path: Path) -> None:
    assert BackendConfig().roles == ("ingest", "sealer", "api")
    assert BackendConfig(roles="api,sealer").roles == ("sealer", "api")  # type: ignore[arg-type]
    assert BackendConfig(roles=["all"]).roles == ("ingest", "sealer", "api")  # type: ignore[arg-type]
    for bad in ("ingest,seal", "", ["web"]):
        with pytest.raises(ConfigError, match="roles"):
            BackendConfig(roles=bad)  # type: ignore[arg-type]
    for bad in ("a/b", "a+", "#", "two words"):
        with pytest.raises(ConfigError, match="share_group"):
            BackendConfig(share_group=bad)
    toml = tmp_path / "backend.toml"
    toml.write_text('[backend]\nroles = ["ingest"]\nshare_group = "ingest"\nclient_id = "mc"\n')
    config = BackendConfig.load(toml)
    assert config.roles == ("ingest",)
    assert config.worker_client_id() == f"mc-{os.uname().nodename}-{os.getpid()}"
    assert BackendConfig(client_id="mc").worker_client_id() == "mc"  # no group: as configured
    assert subscriptions() == ("meterchain/v1/+/readings", "meterchain/v1/+/ocmf",
                               "meterchain/v1/+/status")
    # OCMF stays plain: the worker that acks a reading has seen the record published before it.
    assert subscriptions("g") == ("$share/g/meterchain/v1/+/readings", "meterchain/v1/+/ocmf",
                                  "$share/g/meterchain/v1/+/status")


async def test_a_second_sealer_refuses_to_start(tmp_path: Path) -> None:
    config = BackendConfig(db=str(tmp_path / "mc.db"), http_port=free_port(), roles="sealer",
                           log_key=str(tmp_path / "log.key"), origin="scale.example/log")
    second = BackendConfig(db=config.db, http_port=free_port(), roles="sealer,api",
                           log_key=config.log_key, origin=config.origin)
    async with serving(config):
        with pytest.raises(ServiceError, match="another sealer already runs") as refused:
            await serve(second)
        assert f"pid {os.getpid()}" in str(refused.value)
    async with serving(second):  # the first one stopped: its lock is gone
        pass
    # A sealer killed outright leaves no stale lock behind.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from meterchain.backend.service import "
         "SealerLock; SealerLock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(60)",
         config.db], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(ServiceError, match="another sealer"):
            SealerLock.acquire(config.db)
    finally:
        holder.kill()
        holder.wait(5)
    lock = SealerLock.acquire(config.db)
    assert lock is not None
    lock.release()


async def test_only_the_sealer_creates_the_log_key(tmp_path: Path) -> None:
    api = BackendConfig(db=str(tmp_path / "mc.db"), http_port=free_port(), roles="api",
                        log_key=str(tmp_path / "log.key"), origin="scale.example/log")
    with pytest.raises(ServiceError, match="does not exist"):
        await serve(api)
    assert not (tmp_path / "log.key").exists()
    async with serving(BackendConfig(db=api.db, http_port=free_port(), roles="sealer",
                                     log_key=api.log_key, origin=api.origin)):
        pass
    async with serving(api), httpx.AsyncClient(timeout=5) as http:  # now it serves the sealer's key
        key = await http.get(f"http://127.0.0.1:{api.http_port}/api/v1/log/public-key")
    assert key.text.startswith("scale.example/log+")


async def test_a_share_group_on_a_broker_without_mqtt5_fails_clearly(tmp_path: Path) -> None:
    embedded = await start_embedded(workdir=tmp_path / "amqtt")  # MQTT 3.1.1 only
    ingest = Ingest(await open_store(tmp_path / "mc.db"), broker_url=embedded.url,
                    share_group=GROUP, timeout=1.0)
    try:
        with pytest.raises(ConfigError, match="needs an MQTT 5 broker") as refused:
            await asyncio.wait_for(ingest.run(), 20)
        assert "unset share_group" in str(refused.value)
    finally:
        ingest.close()
        await ingest.store.close()
        await embedded.stop()
