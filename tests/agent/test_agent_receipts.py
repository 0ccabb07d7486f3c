"""The gateway's side of receipts (agent/receipts.py, issue 17): it verifies each receipt with the
log key and a 2-of-3 witness policy, keeps the newest checkpoint on disk, proves each newer one
consistent through the API, and raises the alarm (log line, metric, kept alarm, status message,
`agent check`) when the log forks or rolls back. Bad receipts are counted and change nothing; an
API that cannot be reached leaves the view as it was. Through a real Mosquitto, the publisher
hands the receipt on the device's topic to the keeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import httpx
import pytest
from meterchain.agent.acks import read_alarms, record_alarm
from meterchain.agent.check import CheckReport, _check_receipts
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import BrokerConfig, load_config
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.publisher import Publisher
from meterchain.agent.receipts import ConsistencySource, ReceiptKeeper, read_view, view_path
from meterchain.contract.receipt import receipt_topic
from meterchain.mqtt import BrokerUrl, connect
from meterchain.mqtt.broker import RunningBroker

from tests.support.agent_config import EXAMPLE, write
from tests.support.backend import Gateway
from tests.support.receipts import POLICY_2_OF_3, ReceiptLog

DEVICE = "gw-0001"


def _keeper(tmp_path: Path, log: ReceiptLog, metrics: AgentMetrics | None = None,
            url: str = "http://backend.test") -> ReceiptKeeper:
    outbox = tmp_path / "outbox.sqlite"
    proofs = ConsistencySource(url, log.signer.verifier, attempts=2, backoff=0.01,
                               client=httpx.AsyncClient(transport=log.transport()))
    return ReceiptKeeper(device=DEVICE, log_key=log.signer.verifier, policy=POLICY_2_OF_3,
                         outbox_path=outbox, proofs=proofs, metrics=metrics or AgentMetrics(),
                         on_alarm=lambda kind, detail: record_alarm(outbox, kind, detail))


def _value(metric) -> float:  # type: ignore[no-untyped-def]
    return float(metric._value.get())


@pytest.fixture
def log() -> ReceiptLog:
    history = ReceiptLog(Gateway(DEVICE))
    history.append(1, 2, 3)
    return history


async def test_receipts_move_the_view_forward_and_it_survives_a_restart(tmp_path: Path, log: ReceiptLog) -> None:
    metrics = AgentMetrics()
    keeper = _keeper(tmp_path, log, metrics)
    assert await keeper.handle(log.receipt(3, witnesses=("w1", "w3"))) == "advanced"
    assert not log.requests  # the first checkpoint needs no proof
    log.append(4, 5)
    assert await keeper.handle(log.receipt(5, witnesses=("w2", "w3"))) == "advanced"
    assert log.requests == ["http://backend.test/api/v1/proofs/consistency?old=3&new=5"]
    assert await keeper.handle(log.receipt(2, size=3)) == "held"  # an older one, proven, kept out
    assert _value(metrics.log_size) == 5 and _value(metrics.receipts_verified) == 3
    keeper.close()

    again = _keeper(tmp_path, log)  # a restart: the view is read back
    assert again.view.newest is not None and again.view.newest.size == 5
    assert again.held is not None and again.held.seq == 5
    again.close()
    held, alarm = read_view(tmp_path / "outbox.sqlite") or (None, None)
    assert held is not None and held.checkpoint.size == 5 and alarm is None


def test_agent_check_reports_the_view(tmp_path: Path) -> None:
    """No log key: said, with the fix; no receipt yet: said; a view: its size and reading."""
    log = ReceiptLog(Gateway(DEVICE))
    log.append(1, 2)
    outbox = tmp_path / "outbox.sqlite"
    steps = []
    for line in ("", f'log_key = "{log.signer.verifier}"'):
        config = load_config(write(tmp_path, EXAMPLE.replace(
            'outbox_path = "state/outbox.sqlite"', f'outbox_path = "{outbox}"\n{line}')))
        report = CheckReport(DEVICE)
        _check_receipts(report, config)
        steps += report.steps
    keeper = _keeper(tmp_path, log)
    assert asyncio.run(keeper.handle(log.receipt(2))) == "advanced"
    keeper.close()
    report = CheckReport(DEVICE)
    _check_receipts(report, config)
    steps += report.steps
    assert [step.ok for step in steps] == [True, True, True]
    assert "no log_key" in steps[0].detail and "provision the gateway again" in steps[0].detail
    assert "no receipt verified yet" in steps[1].detail
    assert "newest checkpoint verified: 2 leaves" in steps[2].detail and "seq 2" in steps[2].detail
    view_path(outbox).write_bytes(b"not a database" * 100)  # and its WAL gone with it
    for extra in ("-wal", "-shm"):
        view_path(outbox).with_name(view_path(outbox).name + extra).unlink(missing_ok=True)
    report = CheckReport(DEVICE)
    _check_receipts(report, config)
    assert not report.ok and "unreadable" in report.steps[0].detail and "move the file aside" in report.steps[0].fix


async def test_bad_receipts_are_counted_and_change_nothing(tmp_path: Path, log: ReceiptLog,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics()
    keeper = _keeper(tmp_path, log, metrics)
    assert await keeper.handle(log.receipt(3)) == "advanced"
    log.append(4)
    other = ReceiptLog(Gateway(DEVICE))  # another log key
    other.append(1)
    caplog.set_level(logging.WARNING, "meterchain.agent.receipts")
    outcomes = [
        await keeper.handle(log.receipt(4, witnesses=("w2",))),  # 1 of 3 cosignatures
        await keeper.handle(log.receipt(4, device="gw-0002")),  # another device's
        await keeper.handle(other.receipt(1)),  # signed by a key this gateway does not know
        await keeper.handle(b"\xa1junk"),
        await keeper.handle(b""),
    ]
    assert outcomes == ["refused:witnesses", "refused:foreign-device", "refused:checkpoint",
                        "refused:encoding", "refused:encoding"]
    assert keeper.view.newest is not None and keeper.view.newest.size == 3  # unchanged
    assert _value(metrics.receipts_refused.labels(reason="witnesses")) == 1
    assert "event=receipt_refused" in caplog.text and keeper.alarm is None
    assert not log.requests  # nothing was asked on a bad receipt's word
    keeper.close()


async def test_offline_the_view_waits_for_the_next_receipt(tmp_path: Path, log: ReceiptLog) -> None:
    metrics = AgentMetrics()
    keeper = _keeper(tmp_path, log, metrics)
    await keeper.handle(log.receipt(3))
    log.append(4)
    log.offline = True
    assert await keeper.handle(log.receipt(4)) == "unproven"
    assert len(log.requests) == 2  # retried once (attempts=2), then given up for now
    assert keeper.view.newest is not None and keeper.view.newest.size == 3
    log.offline = False
    log.append(5)
    assert await keeper.handle(log.receipt(5)) == "advanced"
    assert _value(metrics.receipts_unproven) == 1 and keeper.alarm is None
    keeper.close()


async def test_a_fork_at_the_same_size_raises_the_alarm(tmp_path: Path, log: ReceiptLog,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics()
    keeper = _keeper(tmp_path, log, metrics)
    await keeper.handle(log.receipt(3))
    log.append(4)
    fork = log.fork()
    fork.leaves.pop()
    fork.append(4, tag=1)  # the same size, another reading 4: another root
    caplog.set_level(logging.ERROR, "meterchain.agent.receipts")
    await keeper.handle(log.receipt(4))
    assert await keeper.handle(fork.receipt(4)) == "inconsistent"
    assert "event=log_inconsistent" in caplog.text and "fork" in caplog.text
    assert _value(metrics.log_inconsistent) == 1
    held, alarm = read_view(tmp_path / "outbox.sqlite") or (None, None)
    assert alarm is not None and alarm.held == log.note() and alarm.offered == fork.note()
    assert held is not None and held.checkpoint.size == 4  # the view did not move
    assert "log-inconsistent" in read_alarms(tmp_path / "outbox.sqlite")
    # The view is frozen: even a receipt consistent with it no longer moves it.
    log.append(5)
    assert await keeper.handle(log.receipt(5)) == "held"
    assert keeper.view.newest is not None and keeper.view.newest.size == 4
    keeper.close()


async def test_a_larger_checkpoint_that_is_no_extension_raises_the_alarm(tmp_path: Path, log: ReceiptLog) -> None:
    keeper = _keeper(tmp_path, log, url="https://backend.test")  # the proof is the backend's own word
    await keeper.handle(log.receipt(3))
    fork = ReceiptLog(log.gateway, log.signer)  # the same key, another history from the start
    fork.append(1, 2, 3, 4, 5, tag=7)
    keeper.proofs.client = httpx.AsyncClient(transport=fork.transport())  # the API serves the fork
    assert await keeper.handle(fork.receipt(5)) == "inconsistent"
    assert keeper.alarm is not None and "not consistent" in keeper.alarm.detail
    keeper.close()


async def test_a_rolled_back_log_raises_the_alarm(tmp_path: Path, log: ReceiptLog) -> None:
    keeper = _keeper(tmp_path, log, url="https://backend.test")  # /checkpoint is the backend's word
    log.append(4, 5)
    await keeper.handle(log.receipt(5))
    rolled = log.fork()
    del rolled.leaves[3:]  # back to 3 leaves: the receipt of 3 again, then its API is asked
    keeper.proofs.client = httpx.AsyncClient(transport=rolled.transport())
    assert await keeper.handle(rolled.receipt(3)) == "inconsistent"
    assert keeper.alarm is not None and "rolled back" in keeper.alarm.detail
    report = CheckReport(DEVICE)
    config = load_config(write(tmp_path, EXAMPLE.replace(
        'outbox_path = "state/outbox.sqlite"', f'outbox_path = "{tmp_path / "outbox.sqlite"}"\n'
        f'log_key = "{log.signer.verifier}"')))
    _check_receipts(report, config)
    failed = [step for step in report.steps if not step.ok]
    assert len(failed) == 1 and "INCONSISTENT" in failed[0].detail and "rolled back" in failed[0].detail
    assert "do not re-provision" in failed[0].fix
    keeper.close()


async def test_plain_http_answers_are_no_evidence_against_the_log(tmp_path: Path, log: ReceiptLog) -> None:
    """Over plain HTTP to another host anyone on the path can answer for the backend: a proof
    that does not verify, or a 400 and an old signed checkpoint replayed, must not raise the alarm
    (which would freeze the view for good); the receipt waits as if offline."""
    metrics = AgentMetrics()
    keeper = _keeper(tmp_path, log, metrics)
    log.append(4, 5)
    assert await keeper.handle(log.receipt(5)) == "advanced"
    log.append(6)
    bogus = httpx.MockTransport(lambda request: httpx.Response(200, json={"proof": ["A" * 43 + "="]}))
    keeper.proofs.client = httpx.AsyncClient(transport=bogus)
    assert await keeper.handle(log.receipt(6)) == "unproven"
    old = log.fork()
    del old.leaves[3:]  # what a replayer holds: the receipt and the checkpoint of 3, both genuine
    keeper.proofs.client = httpx.AsyncClient(transport=old.transport())
    assert await keeper.handle(old.receipt(3)) == "unproven"
    assert keeper.alarm is None and _value(metrics.log_inconsistent) == 0
    assert read_view(tmp_path / "outbox.sqlite") is not None
    keeper.proofs.client = httpx.AsyncClient(transport=log.transport())  # the real backend again
    assert await keeper.handle(log.receipt(6)) == "advanced"
    assert keeper.view.newest is not None and keeper.view.newest.size == 6
    keeper.close()


def test_loopback_and_https_answers_are_the_backends_own() -> None:
    key = ReceiptLog(Gateway(DEVICE)).signer.verifier
    assert [ConsistencySource(url, key).authenticated for url in (
        "https://backend.example.org", "http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:80",
        "http://backend.example.org", "http://10.0.0.5:8080")] == [True, True, True, True, False, False]


async def test_the_publisher_hands_the_receipt_to_the_keeper(tmp_path: Path, log: ReceiptLog,
                                                               broker: RunningBroker) -> None:
    keeper = _keeper(tmp_path, log)
    outbox = await Outbox.open(tmp_path / "outbox.sqlite", DEVICE)
    publisher = Publisher(device=DEVICE, broker=BrokerConfig(BrokerUrl.parse(broker.url)), outbox=outbox,
                          clock=SystemClock(), metrics=AgentMetrics(), ack_timeout=60,
                          on_receipt=keeper.submit)
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(keeper.run())]
    try:
        async with asyncio.timeout(20):
            await publisher.connected.wait()  # subscribed: connected is set after the subscriptions
        async with connect(BrokerUrl.parse(broker.url), client_id="backend-test") as backend:
            await backend.publish(receipt_topic("gw-0002"), log.receipt(2, device="gw-0002"), qos=1)
            await backend.publish(receipt_topic(DEVICE), log.receipt(3), qos=1)
        async with asyncio.timeout(20):
            while keeper.held is None:
                await asyncio.sleep(0.05)
        assert keeper.held.seq == 3 and keeper.held.checkpoint.size == 3
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await outbox.close()
        keeper.close()
