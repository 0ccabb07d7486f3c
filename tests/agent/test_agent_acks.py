"""The agent believes only acks the control key signed, for itself, not above what it signed
(issue 14): forged ones are refused with an alarm and change nothing in the outbox."""

from __future__ import annotations

from pathlib import Path

from meterchain.agent.acks import AckGuard, read_alarms
from meterchain.agent.clock import SystemClock
from meterchain.agent.config import load_config
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox
from meterchain.agent.publisher import Publisher
from meterchain.contract.ack import Ack, Rejection
from meterchain.contract.control import SignedAck
from meterchain.contract.note import NoteSigner

from tests.support.agent_config import EXAMPLE, write

CONTROL = NoteSigner.generate("test.example/control")
ROTATED = NoteSigner.generate("test.example/control")
FORGER = NoteSigner.generate("test.example/control")  # same name, another key
DEVICE = "gw-0001"


def _ack(upto: int, *, device: str = DEVICE, rejected: tuple = (), keys: tuple = ()) -> SignedAck:  # type: ignore[type-arg]
    return SignedAck(device, upto, rejected, (), 1, keys)


async def _publisher(tmp_path: Path, control_key: str | None) -> tuple[Publisher, Outbox, AgentMetrics]:
    line = f'control_key = "{control_key}"\n' if control_key else ""  # a top-level key
    text = EXAMPLE.replace('outbox_path = "state/outbox.sqlite"\n',
                           'outbox_path = "state/outbox.sqlite"\n' + line, 1)
    config = load_config(write(tmp_path, text))
    outbox = await Outbox.open(config.outbox_path, DEVICE)
    for i in range(1, 6):
        await outbox.append_cycle([CycleEntry("m1", 900 * i, lambda s: f"r{s}".encode())], now=1)
    metrics = AgentMetrics()
    publisher = Publisher(
        device=DEVICE, broker=config.broker, outbox=outbox, clock=SystemClock(), metrics=metrics,
        ack_timeout=60, guard=AckGuard(DEVICE, config.control_key, config.key_path),
        on_alarm=lambda kind, detail: _alarm(config.outbox_path, kind, detail))
    return publisher, outbox, metrics


def _alarm(outbox_path: Path, kind: str, detail: str) -> None:
    from meterchain.agent.acks import record_alarm

    record_alarm(outbox_path, kind, detail)


def _refused(metrics: AgentMetrics, reason: str) -> float:
    return metrics.acks_refused.labels(reason=reason)._value.get()


async def test_forged_acks_are_refused_and_alarmed(tmp_path: Path) -> None:
    publisher, outbox, metrics = await _publisher(tmp_path, str(CONTROL.verifier))
    try:
        assert await outbox.depth() == 5
        await publisher.handle_ack(_ack(3).sign([FORGER]))  # a key the gateway does not trust
        await publisher.handle_ack(Ack(DEVICE, 3).to_cbor())  # an unsigned v1 ack
        await publisher.handle_ack(_ack(1000).sign([CONTROL]))  # issue 14: upto above all signed
        await publisher.handle_ack(_ack(3, device="gw-other").sign([CONTROL]))
        await publisher.handle_ack(_ack(2, rejected=((9, "conflict", "x"),)).sign([CONTROL]))
        assert await outbox.depth() == 5 and await outbox.next_seq() == 6  # nothing changed
        assert (_refused(metrics, "signature"), _refused(metrics, "encoding"),
                _refused(metrics, "ahead"), _refused(metrics, "foreign-device")) == (1, 1, 2, 1)
        alarms = read_alarms(tmp_path / "state/outbox.sqlite")
        assert alarms["ack-refused:ahead"]["count"] == 2  # the newest detail is kept
        assert "sequence 9" in str(alarms["ack-refused:ahead"]["detail"])
        # The backend's own ack is applied.
        await publisher.handle_ack(_ack(3, rejected=((2, "conflict", "first kept"),))
                                   .sign([CONTROL]))
        assert [r.seq for r in await outbox.readings()] == [4, 5]
        assert [q.seq for q in await outbox.quarantined()] == [2]
        assert metrics.acks_unverified._value.get() == 0
    finally:
        await outbox.close()


async def test_a_rotation_reaches_the_gateway_through_a_verified_ack(tmp_path: Path) -> None:
    publisher, outbox, metrics = await _publisher(tmp_path, str(CONTROL.verifier))
    try:
        # The overlap: signed by both, naming the new key; the gateway adopts it.
        await publisher.handle_ack(_ack(1, keys=(str(ROTATED.verifier),)).sign([ROTATED, CONTROL]))
        assert [str(v) for v in publisher.guard.trusted] == [str(ROTATED.verifier)]
        assert (tmp_path / "device.key.control-keys").read_text().strip() == str(ROTATED.verifier)
        await publisher.handle_ack(_ack(2).sign([CONTROL]))  # the retired key: refused now
        assert _refused(metrics, "signature") == 1 and await outbox.depth() == 4
        await publisher.handle_ack(_ack(2).sign([ROTATED]))
        assert await outbox.depth() == 3
        # A restart reads the adopted keys from beside the device key.
        guard = AckGuard(DEVICE, str(CONTROL.verifier), tmp_path / "device.key")
        assert [str(v) for v in guard.trusted] == [str(ROTATED.verifier)]
    finally:
        await outbox.close()


async def test_without_a_control_key_every_ack_is_an_alarm(tmp_path: Path) -> None:
    publisher, outbox, metrics = await _publisher(tmp_path, None)
    try:
        await publisher.handle_ack(_ack(2).sign([FORGER]))
        await publisher.handle_ack(Ack(DEVICE, 3, (Rejection(3, "conflict", "x"),)).to_cbor())
        assert metrics.acks_unverified._value.get() == 2
        assert [r.seq for r in await outbox.readings()] == [4, 5]
        # Counted each time, kept (and logged) at most once a minute.
        assert read_alarms(tmp_path / "state/outbox.sqlite")["ack-unverified"]["count"] == 1
        # Even unverified, an ack above what was signed is refused.
        await publisher.handle_ack(Ack(DEVICE, 1000).to_cbor())
        assert _refused(metrics, "ahead") == 1 and await outbox.depth() == 2
    finally:
        await outbox.close()


async def test_agent_check_reports_the_control_key_and_refused_acks(tmp_path: Path) -> None:
    from meterchain.agent.check import CheckReport, _check_acks

    publisher, outbox, metrics = await _publisher(tmp_path, str(CONTROL.verifier))
    try:
        config = load_config(tmp_path / "agent.toml")
        report = CheckReport(DEVICE)
        _check_acks(report, config)
        assert report.ok and "verified with control key test.example/control" in report.steps[0].detail
        await publisher.handle_ack(_ack(1000).sign([CONTROL]))  # an alarm the agent keeps
        report = CheckReport(DEVICE)
        _check_acks(report, config)
        assert not report.ok
        failed = [s for s in report.steps if not s.ok]
        assert "ack-refused:ahead" in failed[0].detail and "ACL" in failed[0].fix
    finally:
        await outbox.close()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    report = CheckReport(DEVICE)
    _check_acks(report, load_config(write(legacy, EXAMPLE)))  # no control_key
    (step,) = report.steps
    assert step.ok and "UNVERIFIED" in step.detail and "provision the gateway again" in step.detail


async def test_a_refused_ack_shows_in_the_status_message(tmp_path: Path) -> None:
    from meterchain.agent.acks import recent_alarms
    from meterchain.agent.status import StatusReporter
    from meterchain.contract.status import GatewayStatus

    publisher, outbox, metrics = await _publisher(tmp_path, str(CONTROL.verifier))
    try:
        path = tmp_path / "state/outbox.sqlite"
        reporter = StatusReporter(device=DEVICE, outbox=outbox, clock=SystemClock(),
                                  alarms=lambda: recent_alarms(path))
        assert GatewayStatus.from_cbor(await reporter()).alarms == ()
        await publisher.handle_ack(_ack(1000).sign([CONTROL]))
        assert GatewayStatus.from_cbor(await reporter()).alarms == ("ack-refused:ahead",)
        assert recent_alarms(path, now=10**10) == ()  # a day later it is no longer news
    finally:
        await outbox.close()
