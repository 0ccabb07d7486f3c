"""``meterchain agent check``: the commissioning self-test and its report.

It does, once, what the agent does forever, and proves the result end to end: read every
configured meter, check the gateway's clock, sign one reading per meter into the outbox,
publish it (the agent's own Publisher: same TLS, login and MQTT 5 fallback), wait for the
backend's ack, then fetch the reading's inclusion proof and verify it against a checkpoint
signed by the log key the backend gave at provisioning ("logged at position N").

Every failed step says its likely cause and fix. The report is printed and also written as
JSON for the installer's records. Stop the agent service first: both would use the outbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

from meterchain.agent.clock import SystemClock, kernel_clock_sync
from meterchain.agent.config import AgentConfig
from meterchain.agent.exchange import MeterSerials
from meterchain.agent.meters import MeterSource, modbus_sources
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.publisher import Backoff, Publisher
from meterchain.agent.scheduler import Poller
from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout
from meterchain.bridge.modbus.reader import SerialPortError
from meterchain.contract import merkle
from meterchain.contract.checkpoint import open_checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import parse_message
from meterchain.contract.note import NoteVerifier
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import key_id


@dataclass(slots=True)
class Step:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(slots=True)
class CheckReport:
    gateway: str
    key_fingerprint: str = ""
    steps: list[Step] = field(default_factory=list)
    meters: list[dict[str, object]] = field(default_factory=list)
    broker_latency_ms: int | None = None
    ack_seconds: float | None = None
    logged_at: int | None = None
    tree_size: int | None = None
    checked_at: int = 0

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def add(self, name: str, ok: bool, detail: str, fix: str = "") -> bool:
        self.steps.append(Step(name, ok, detail, fix))
        return ok

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def meter_failure_fix(exc: BaseException) -> str:
    """The likely cause of a failed meter read, in the installer's terms."""
    if isinstance(exc, SerialPortError):
        return ("wrong port, or no permission: check `port` (ls -l /dev/serial/by-id/); the agent's "
                "user must be in 'dialout'")
    if isinstance(exc, MeterTimeout):
        return ("the meter is silent: wrong baud rate or modbus_id (compare with the meter's "
                "display, or run `meterchain agent scan PORT`), A/B swapped on RS-485, or no power")
    if isinstance(exc, MeterProtocolError):
        return ("garbled or refused answer: wrong baud rate, a noisy line (termination), or the "
                "wrong `model` for this meter")
    return "see the detail; run `meterchain agent scan PORT` to see what answers"


async def run_check(config: AgentConfig, signer, *, record: dict[str, object] | None,  # type: ignore[no-untyped-def]
                    sources: list[MeterSource] | None = None, timeout: float = 60.0,
                    clock_sync=kernel_clock_sync) -> CheckReport:  # type: ignore[no-untyped-def]
    """Run every step; a step that cannot start because an earlier one failed is skipped."""
    report = CheckReport(config.device_id, key_id(signer.public_key_der).hex(),
                         checked_at=int(time.time()))
    report.add("key", True, f"device key {config.key_path}, fingerprint {report.key_fingerprint}")
    if record and record.get("key_id") and record["key_id"] != report.key_fingerprint:
        report.add("key", False, "the key is not the one provisioned",
                   "provision again (meterchain agent provision …) or restore the key file")
    sources = sources if sources is not None else list(modbus_sources(config.meters))
    try:
        readable = await _check_meters(report, sources)
        _check_clock(report, clock_sync())
        if readable:
            await _publish_and_prove(report, config, signer, sources, record, timeout)
    finally:
        for source in sources:
            source.close()
    return report


async def _check_meters(report: CheckReport, sources: list[MeterSource]) -> bool:
    any_read = False
    for source in sources:
        try:
            snapshot = await source.read()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the check
            detail = exc.diagnostics() if hasattr(exc, "diagnostics") else repr(exc)
            report.add(f"meter {source.name}", False, detail, meter_failure_fix(exc))
            report.meters.append({"name": source.name, "ok": False})
            continue
        any_read = True
        report.meters.append({"name": source.name, "ok": True, "serial": snapshot.serial,
                              "import_wh": snapshot.import_wh, "export_wh": snapshot.export_wh,
                              "power_w": snapshot.power_w})
        report.add(f"meter {source.name}", True,
                   f"serial {snapshot.serial}: import {snapshot.import_wh} Wh, export "
                   f"{snapshot.export_wh} Wh")
    return any_read


def _check_clock(report: CheckReport, sync: ClockSync) -> None:
    if sync == ClockSync.SYNCED:
        report.add("clock", True, "gateway clock synchronised (NTP); the SDM meters have no clock "
                   "of their own, so there is no meter drift to measure")
    elif sync == ClockSync.UNSYNCED:
        report.add("clock", False, "gateway clock NOT synchronised",
                   "clock unsynchronised: check `timedatectl`, that NTP (UDP 123) reaches its "
                   "servers, and systemd-timesyncd or chrony runs; readings are marked unsynced")
    else:
        report.add("clock", True, "gateway clock state unknown (no adjtimex here)")


async def _publish_and_prove(report: CheckReport, config: AgentConfig, signer,  # type: ignore[no-untyped-def]
                             sources: list[MeterSource], record: dict[str, object] | None,
                             timeout: float) -> None:
    clock, metrics = SystemClock(), AgentMetrics()
    outbox = await Outbox.open(config.outbox_path, config.device_id)
    try:
        await outbox.set_key_id(key_id(signer.public_key_der))
        poller = Poller(device=config.device_id, signer=signer, sources=sources, outbox=outbox,
                        clock=clock, interval=config.interval_seconds, metrics=metrics,
                        clock_sync=kernel_clock_sync,
                        serials=MeterSerials.beside(config.outbox_path))
        latest = int(clock.now()) // config.interval_seconds * config.interval_seconds
        await poller.poll_once(latest)  # the interval that just ended, as the agent would sign it
        pending = await outbox.readings()
        if not pending:
            due = time.strftime("%H:%M:%S UTC", time.gmtime(latest + config.interval_seconds))
            report.add("publish", False, "nothing to publish: this interval is already signed "
                       "and acknowledged", f"run the check again after {due} (the next interval)")
            return
        target = pending[-1]
        publisher = Publisher(device=config.device_id, broker=config.broker, outbox=outbox,
                              clock=clock, metrics=metrics, ack_timeout=config.ack_timeout_seconds,
                              backoff=Backoff())
        began = time.monotonic()
        task = asyncio.create_task(publisher.run())
        try:
            sent = await _wait(lambda: _sent(outbox, target.seq), timeout, task)
            if not sent:
                report.add("publish", False, f"no PUBACK from {config.broker.url} in {timeout:.0f} s",
                           "no network or wrong broker login: check broker.url, the gateway's "
                           "route to the broker (port 8883/1883 open?), username and password")
                return
            report.broker_latency_ms = int((time.monotonic() - began) * 1000)
            report.add("publish", True, f"reading seq {target.seq} published to "
                       f"{config.broker.url} ({report.broker_latency_ms} ms incl. connect)")
            acked = await _wait(lambda: _acked(outbox, target.seq), timeout, task)
            report.ack_seconds = round(time.monotonic() - began, 2)
            quarantined = [q for q in await outbox.quarantined() if q.seq == target.seq]
            if quarantined:
                report.add("ack", False, f"the backend rejected seq {target.seq}: "
                           f"{quarantined[0].reason} ({quarantined[0].detail})",
                           "key not enrolled or rotated elsewhere: provision again")
                return
            if not acked:
                report.add("ack", False, f"no ack from the backend within {timeout:.0f} s",
                           "the backend is down or not subscribed, or the broker's ACL denies "
                           "this device's topics; ask the operator (its logs name the reading)")
                return
            report.add("ack", True, f"backend committed seq {target.seq} ({report.ack_seconds} s)")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await _prove(report, config, target.seq, parse_message(target.message), target.message,
                     record, timeout)
    finally:
        await outbox.close()


async def _sent(outbox: Outbox, seq: int) -> bool:
    rows = [r for r in await outbox.readings() if r.seq == seq]
    return not rows or rows[0].send_count > 0


async def _acked(outbox: Outbox, seq: int) -> bool:
    return await outbox.acked_upto() >= seq


async def _wait(condition, timeout: float, task: asyncio.Task[None]) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        if task.done():
            task.result()  # a crashed publisher raises here
        await asyncio.sleep(0.05)
    return False


async def _prove(report: CheckReport, config: AgentConfig, seq: int, signed, message: bytes,  # type: ignore[no-untyped-def]
                 record: dict[str, object] | None, timeout: float) -> None:
    log_key = record.get("log_public_key") if record else None
    if not isinstance(log_key, str):
        report.add("logged", False, "no log key (provisioned.json is missing)",
                   "provision with `meterchain agent provision` (it writes provisioned.json)")
        return
    leaf = merkle.leaf_hash(message)
    url = (f"{config.backend_url.rstrip('/')}/api/v1/devices/{quote(config.device_id)}/readings/"
           f"{seq}/inclusion?leaf_hash={leaf.hex()}")
    deadline = time.monotonic() + timeout
    answer: dict[str, object] | None = None
    problem = ""
    while time.monotonic() < deadline:
        status, answer, problem = await asyncio.to_thread(_get_json, url)
        if status == 200:
            break
        if status not in (404, 409):  # 404: the API may lag the ack by a moment
            break
        await asyncio.sleep(0.5)
    if answer is None or "leaf_index" not in answer:
        report.add("logged", False, f"no inclusion proof: {problem}",
                   "no network to the backend's API, or the log is not sealing; check backend_url")
        return
    try:
        verifier = NoteVerifier.parse(log_key)
        checkpoint = open_checkpoint(str(answer["checkpoint"]), verifier)
        index = int(answer["leaf_index"])  # type: ignore[call-overload]
        proof = [base64.b64decode(p) for p in answer["proof"]]  # type: ignore[union-attr]
        merkle.verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root)
    except (MeterchainError, ValueError, KeyError) as exc:
        report.add("logged", False, f"the inclusion proof does not verify: {exc}",
                   "the backend is not the one this gateway was provisioned with: stop and "
                   "report it")
        return
    report.logged_at, report.tree_size = index, checkpoint.size
    report.add("logged", True, f"logged at position {index} (checkpoint of {checkpoint.size} "
               f"leaves, signed by {verifier.name})")


def _get_json(url: str) -> tuple[int, dict[str, object] | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read()), ""
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        return exc.code, None, str(body.get("detail") or exc.reason)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, None, str(getattr(exc, "reason", exc))


def format_report(report: CheckReport) -> str:
    """The human report: one line per step, the fix under each failure."""
    lines = [f"gateway {report.gateway}   key fingerprint {report.key_fingerprint}"]
    for step in report.steps:
        lines.append(f"  [{'ok' if step.ok else 'FAIL'}] {step.name}: {step.detail}")
        if not step.ok and step.fix:
            lines.append(f"         fix: {step.fix}")
    lines.append("commissioning " + ("PASSED" if report.ok else "FAILED"))
    return "\n".join(lines)
