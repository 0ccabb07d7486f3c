"""Receipts end to end (issue 17): `backend serve` with three `meterchain witness` processes and a
2-of-3 policy, and a real agent on emulated meters holding receipts.

1. The agent verifies the receipts the backend sends after each cosigned checkpoint and keeps
   the newest; a receipt cosigned by only 1 of the 3 is refused and changes nothing.
2. The log is rolled back: the backend is replaced by one on a copy of its store taken earlier,
   under the same log key, broker and URL. The witnesses refuse every checkpoint of the rolled-
   back log; the gateway, holding a newer cosigned checkpoint, raises the alarm (metric, status
   message, `agent check`) and so does the monitor (exit 1).
3. Two witnesses lose their state and cosign the rolled-back log's next checkpoint (a quorum by
   the policy's count, the third still refuses): the gateway still catches its receipt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meterchain.agent.check import CheckReport, _check_receipts
from meterchain.backend.config import BackendConfig
from meterchain.backend.devices.registry import enrol
from meterchain.backend.log.proofs import inclusion_proof
from meterchain.backend.service import load_or_create_log_key, serve
from meterchain.backend.store import open_store
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import CosignerKey, verify_cosignatures
from meterchain.contract.receipt import Receipt, receipt_topic
from meterchain.contract.status import GatewayStatus
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.mqtt import BrokerUrl, connect
from meterchain.mqtt.broker import RunningBroker, free_port

from tests.support.agent import DEVICE, running, start_gateway, wait_until
from tests.support.backend import Gateway
from tests.support.witness import WitnessProcess

pytestmark = pytest.mark.timeout(300)
ORIGIN = "e2e.meterchain.test/log"


def _monitor(url: str, vkey: Path, policy: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meterchain.cli.main", "monitor", url, "--log-key", str(vkey),
                           "--policy", str(policy), "--state", str(state), "--once"],
                          capture_output=True, text=True, timeout=120)


class Backend:
    """`backend serve` as a task; ``start`` again on another store means another history."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self.task = asyncio.create_task(serve(self.config, stop=self.stop, ready=ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self.task}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            self.task.result()  # it failed to start: say why
        assert ready.is_set(), "the backend did not start"

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)


def _only_cosigned_by(note: str, witness: str) -> str:
    """``note`` with the log's signature and one witness's cosignature only."""
    body, signatures = note.split("\n\n", 1)
    kept = [line for line in signatures.splitlines(keepends=True)
            if line.startswith(f"— {ORIGIN} ") or line.startswith(f"— {witness} ")]
    return body + "\n\n" + "".join(kept)


async def test_a_gateway_holding_receipts_catches_a_rolled_back_log(tmp_path: Path, broker: RunningBroker) -> None:
    signer = load_or_create_log_key(tmp_path / "log.key", ORIGIN)
    (tmp_path / "log.pub").write_text(str(signer.verifier) + "\n")
    witnesses = [WitnessProcess.create(tmp_path / f"w{i}", f"witness.e2e/w{i}", str(signer.verifier))
                 for i in (1, 2, 3)]
    await asyncio.gather(*(asyncio.to_thread(w.start) for w in witnesses))  # each waits until it answers
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", CosignerKey.parse(w.vkey), w.url)
                                      for i, w in enumerate(witnesses, 1)])
    (tmp_path / "witnesses.policy").write_text(policy.to_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = BackendConfig(db=str(tmp_path / "backend.sqlite"), broker=broker.url, http_port=port,
                           log_key=str(tmp_path / "log.key"), origin=ORIGIN, admin_token="e2e-admin-token",
                           seal_interval=0.3, witness_policy=str(tmp_path / "witnesses.policy"),
                           witness_timeout=5.0)
    gateway = await start_gateway(tmp_path / "gateway", broker.url)
    gateway.config = dataclasses.replace(gateway.config, backend_url=url, log_key=str(signer.verifier),
                                         witness_policy=policy.to_text())
    store = await open_store(config.db)
    await enrol(store, DEVICE, gateway.spki, int(time.time()))
    honest = Backend(config)
    rolled: Backend | None = None
    agent = gateway.agent(status_interval=1.0)
    try:
        await honest.start()
        async with running(agent.run):
            # 1. Receipts arrive and are verified with the 2-of-3 policy.
            await wait_until(lambda: agent.receipts is not None and agent.receipts.held is not None,
                             60, "a first verified receipt")
            keeper = agent.receipts
            assert keeper is not None and keeper.held is not None
            snapshot = tmp_path / "rolled-back.sqlite"  # the store as it is now: the rollback's copy
            copied = await _cosigned_copy(config.db, snapshot, policy)
            await wait_until(lambda: keeper.held is not None and keeper.held.checkpoint.size > copied.size + 2,
                             60, "the gateway's view well beyond the copy")
            held = keeper.held
            assert len(verify_cosignatures(held.note, policy.keys)) >= 2
            monitor_state = tmp_path / "monitor.json"
            done = await asyncio.to_thread(_monitor, url, tmp_path / "log.pub", tmp_path / "witnesses.policy",
                                           monitor_state)
            assert done.returncode == 0, done.stdout + done.stderr

            # A receipt cosigned by 1 of the 3 is refused; the view does not move.
            row = await store.reading(DEVICE, held.seq)
            assert row is not None and row.leaf_index is not None
            short = Receipt(DEVICE, held.seq, row.message, row.leaf_index,
                            tuple(await inclusion_proof(store, row.leaf_index, held.checkpoint.size)),
                            _only_cosigned_by(held.note, "witness.e2e/w1"))
            async with connect(BrokerUrl.parse(broker.url), client_id="e2e-forger") as forger:
                await forger.publish(receipt_topic(DEVICE), short.to_cbor(), qos=1)
            refused = agent.metrics.receipts_refused.labels(reason="witnesses")
            await wait_until(lambda: refused._value.get() >= 1, 30, "the 1-of-3 receipt refused")
            assert keeper.alarm is None and keeper.view.newest is not None
            assert keeper.view.newest.size >= held.checkpoint.size

            # 2. The rollback: the same key, broker and URL, the store as it was at the copy.
            await honest.close()
            rolled = Backend(dataclasses.replace(config, db=str(snapshot)))
            await rolled.start()
            await wait_until(lambda: keeper.alarm is not None, 60, "the gateway's alarm")
            frozen = keeper.held
            assert "rolled back" in keeper.alarm.detail or "not consistent" in keeper.alarm.detail \
                or "fork" in keeper.alarm.detail
            assert agent.metrics.log_inconsistent._value.get() == 1
            assert agent.publisher is not None and agent.publisher.status is not None
            status = GatewayStatus.from_cbor(await agent.publisher.status())
            assert "log-inconsistent" in status.alarms
            report = CheckReport(DEVICE)
            _check_receipts(report, gateway.config)
            assert [step.name for step in report.steps if not step.ok] == ["receipts"]
            # The witnesses refuse it: none cosigns a checkpoint of the rolled-back history.
            rolled_store = await open_store(str(snapshot))
            try:
                await wait_until_sealed_beyond(rolled_store, copied.size)
                newest = await rolled_store.latest_checkpoint()
                assert newest is not None and not verify_cosignatures(newest.note, policy.keys)
            finally:
                await rolled_store.close()
            done = await asyncio.to_thread(_monitor, url, tmp_path / "log.pub", tmp_path / "witnesses.policy",
                                           monitor_state)
            assert done.returncode == 1, done.stdout + done.stderr

            # 3. Two witnesses lose their state and cosign the rolled-back log; the third refuses.
            before = agent.metrics.log_inconsistencies._value.get()
            for witness in witnesses[:2]:
                witness.stop()
                for stale in witness.directory.glob("witness.db*"):
                    stale.unlink()
            await asyncio.gather(*(asyncio.to_thread(w.start) for w in witnesses[:2]))
            # The gateway cannot resend what the honest log acked (it was deleted then), so the
            # rolled-back log gets little new from it: devices enrolled there make it seal, one
            # every few seconds until the witnesses' backoff (after their refusals) has passed.
            rolled_store = await open_store(str(snapshot))
            try:
                deadline = time.monotonic() + 120
                n = 0
                while agent.metrics.log_inconsistencies._value.get() <= before:
                    assert time.monotonic() < deadline, "no quorum-cosigned receipt of the rolled-back log"
                    n += 1
                    await enrol(rolled_store, f"gw-other-{n}", Gateway(f"gw-other-{n}").public_key,
                                int(time.time()))
                    await asyncio.sleep(3)
            finally:
                await rolled_store.close()
            rolled_store = await open_store(str(snapshot))
            try:
                newest = await rolled_store.latest_checkpoint()
                assert newest is not None
                assert set(verify_cosignatures(newest.note, policy.keys)) <= {"witness.e2e/w1", "witness.e2e/w2"}
            finally:
                await rolled_store.close()
            assert keeper.held == frozen  # the view never followed the rolled-back log
    finally:
        if rolled is not None:
            await rolled.close()
        await honest.close()
        await store.close()
        await gateway.bus.stop()
        for witness in witnesses:
            witness.stop()


async def _cosigned_copy(db: str, copy: Path, policy: WitnessPolicy) -> Checkpoint:
    """A copy of the store whose newest checkpoint carries the quorum (taken again until it does:
    a copy between a seal and its cosignatures would hold a checkpoint no gateway took)."""
    deadline = time.monotonic() + 60
    while True:
        copy.unlink(missing_ok=True)
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)
        with sqlite3.connect(copy) as target:
            note = target.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()[0]
        if policy.satisfied(verify_cosignatures(note, policy.keys)):
            return Checkpoint.parse_body(note.split("\n\n", 1)[0] + "\n")
        assert time.monotonic() < deadline, "no cosigned checkpoint to copy"
        await asyncio.sleep(0.2)


async def wait_until_sealed_beyond(store, size: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while True:
        row = await store.latest_checkpoint()
        if row is not None and row.size > size:
            return
        assert time.monotonic() < deadline, f"the rolled-back log sealed nothing beyond {size}"
        await asyncio.sleep(0.2)
