"""``meterchain agent check``: the commissioning self-test and its report.

It does, once, what the agent does forever, and proves the result end to end: read every
configured meter (a DLMS meter as the agent's session does: serial, profile layout, clock, then
its live energy registers), check the gateway's clock and every DLMS meter's clock drift against
the threshold the agent flags readings with, sign one reading per Modbus meter into the outbox
(and for a DLMS meter what the agent signs at its first start: the profile's unsigned intervals),
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
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

from meterchain.agent.acks import AckGuard, read_alarms
from meterchain.agent.backfill import ClockCheck
from meterchain.agent.clock import Clock, SystemClock, kernel_clock_sync
from meterchain.agent.config import AgentConfig
from meterchain.agent.exchange import MeterSerials
from meterchain.agent.meters import MeterSource, modbus_sources
from meterchain.agent.meters_dlms import (
    DlmsMeterSource,
    DlmsProfileError,
    dlms_sources,
    whole_wh,
)
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.profile_poller import dlms_pollers
from meterchain.agent.publisher import Publisher
from meterchain.agent.receipts import read_view, view_path
from meterchain.agent.recovery import open_outbox
from meterchain.agent.scheduler import Poller
from meterchain.bridge.dlms import HdlcAddress
from meterchain.bridge.dlms.errors import (
    AddressError,
    AssociationError,
    DataAccessError,
    HdlcError,
    LinkError,
    PortError,
    RetriesExhausted,
)
from meterchain.bridge.dlms.obis import ACTIVE_EXPORT_OBIS, ACTIVE_IMPORT_OBIS
from meterchain.bridge.modbus.errors import MeterProtocolError, MeterTimeout
from meterchain.bridge.modbus.reader import SerialPortError
from meterchain.contract import merkle
from meterchain.contract.checkpoint import open_checkpoint
from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import SignedReading, parse_message
from meterchain.contract.note import NoteVerifier
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import Signer, key_id
from meterchain.mqtt import Backoff


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


PORT_FIX = ("wrong port, or no permission: check `port` (ls -l /dev/serial/by-id/); the agent's "
            "user must be in 'dialout'")


def meter_failure_fix(exc: BaseException) -> str:
    """The likely cause of a failed meter read, in the installer's terms."""
    if isinstance(exc, SerialPortError):
        return PORT_FIX
    if isinstance(exc, MeterTimeout):
        return ("the meter is silent: wrong baud rate or modbus_id (compare with the meter's "
                "display, or run `meterchain agent scan PORT`), A/B swapped on RS-485, or no power")
    if isinstance(exc, MeterProtocolError):
        return ("garbled or refused answer: wrong baud rate, a noisy line (termination), or the "
                "wrong `model` for this meter")
    return "see the detail; run `meterchain agent scan PORT` to see what answers"


def dlms_failure_fix(exc: BaseException, source: DlmsMeterSource) -> str:
    """The likely cause of a failed DLMS session, in the installer's terms."""
    s, meter = source.settings, source.config
    where = (f"HDLC address {HdlcAddress(s.server_address, s.physical_address)} at "
             f"{meter.baudrate} baud")
    scan = f"`meterchain agent scan {meter.port} --protocol dlms`"
    if isinstance(exc, PortError):
        return PORT_FIX
    if isinstance(exc, RetriesExhausted):
        fault = exc.last_fault
        if isinstance(fault, AddressError):
            return (f"answers come from another HDLC address than {where}: set server_address "
                    f"and physical_address to what {scan} finds")
        if isinstance(fault, HdlcError):
            return ("garbled frames (bad check sequence): wrong baud rate, A/B swapped on "
                    "RS-485, or a noisy line (120 ohm termination, shielded pair)")
        if exc.context.get("operation") == "snrm":
            return (f"no answer at {where}: wrong server_address, physical_address or baudrate "
                    f"(run {scan}), A/B swapped on RS-485, or no power")
        return ("the meter stopped answering during the session: a noisy line, or raise "
                "timeout_seconds for a slow meter")
    if isinstance(exc, AssociationError):
        return (f"association refused: wrong client_address ({s.client_address}) or password; "
                "the public client 16 needs none, the management client 1 the meter's LLS "
                "password (password_file)")
    if isinstance(exc, DataAccessError):
        return ("the meter refused a read: this client may not read that object (use the "
                "management client: client_address = 1 with its password_file), or the object "
                "does not exist (check profile_obis)")
    if isinstance(exc, DlmsProfileError):
        return "the meter's profile cannot give readings as it is: see the detail"
    if isinstance(exc, LinkError):
        return ("the meter refused the link (DM/FRMR): another client holds it; stop that "
                "client, or wait for the meter's inactivity timeout")
    return f"see the detail; run {scan} to see what answers"


async def run_check(config: AgentConfig, signer: Signer, *, record: dict[str, object] | None,
                    sources: list[MeterSource] | None = None, timeout: float = 60.0,
                    clock_sync: Callable[[], ClockSync] = kernel_clock_sync) -> CheckReport:
    """Run every step; a step that cannot start because an earlier one failed is skipped."""
    report = CheckReport(config.device_id, key_id(signer.public_key_der).hex(),
                         checked_at=int(time.time()))
    report.add("key", True, f"device key {config.key_path}, fingerprint {report.key_fingerprint}")
    if record and record.get("key_id") and record["key_id"] != report.key_fingerprint:
        report.add("key", False, "the key is not the one provisioned",
                   "provision again (meterchain agent provision …) or restore the key file")
    modbus_meters = [m for m in config.meters if m.dlms is None]
    sources = sources if sources is not None else list(modbus_sources(modbus_meters))
    clock = SystemClock()
    sync = clock_sync()
    try:
        readable = await _check_meters(report, sources)
        clocks = await _check_dlms_meters(report, dlms_sources(config.meters, clock), sync)
        _check_clock(report, sync, has_modbus=bool(sources))
        for source, check in clocks:
            _check_meter_clock(report, source, check)
        if readable or clocks:
            answering = {source.name for source, _ in clocks}
            await _publish_and_prove(report, config, signer, sources, answering, record,
                                     timeout, clock, clock_sync)
    finally:
        for meter_source in sources:
            meter_source.close()
    _check_acks(report, config)  # last: the steps above keep their order
    _check_receipts(report, config)
    return report


def _check_acks(report: CheckReport, config: AgentConfig) -> None:
    """Signed acks (agent/acks.py): the control key, and the alarms the running agent kept."""
    if config.control_key is None:
        # Reported, not failed (old configs keep working); the advice is in the detail.
        report.add("acks", True, "no control_key: acks are taken UNVERIFIED (each one raises an "
                   "alarm), so a forged ack could make this gateway forget readings; provision "
                   "the gateway again (meterchain agent provision …) to get the backend's "
                   "control key")
    else:
        report.add("acks", True, "acks verified with control key "
                   f"{NoteVerifier.parse(config.control_key).name}")
    for kind, alarm in sorted(read_alarms(config.outbox_path).items()):
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(int(alarm.get("last", 0))))
        detail = f"{alarm.get('count')}× {kind}, last at {when}: {alarm.get('detail')}"
        if kind.startswith("log-"):
            continue  # the receipts step reports the log's alarms (_check_receipts)
        if kind.startswith("ack-refused"):
            report.add("acks", False, detail, "someone publishes acks on this gateway's ack "
                       "topic: check the broker's ACL (docs/deploy.md) and the backend's "
                       "control key (meterchain backend control-key show)")
        else:  # unverified acks, declared gaps: reported, not failures of this gateway
            report.add("acks", True, detail)


def _check_receipts(report: CheckReport, config: AgentConfig) -> None:
    """Receipts (agent/receipts.py): the newest checkpoint the running agent verified, and the
    alarm if the log ever contradicted it."""
    if config.log_key is None:
        report.add("receipts", True, "no log_key: receipts are not taken, so this gateway would not "
                   "notice a log that rolls back or forks; provision the gateway again "
                   "(meterchain agent provision …) to get the log key and witness policy")
        return
    kept = read_view(config.outbox_path)
    if kept is None and view_path(config.outbox_path).exists():
        report.add("receipts", False, f"{view_path(config.outbox_path)} is unreadable, so receipts "
                   "are not taken", "move the file aside (keep it: it may be evidence) and restart "
                   "the agent; it starts a new view from the next receipt")
        return
    held, alarm = kept if kept is not None else (None, None)
    if alarm is not None:
        first = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(alarm.first))
        last = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(alarm.last))
        report.add("receipts", False, f"the log is INCONSISTENT with what this gateway saw "
                   f"({alarm.count}×, first at {first}, last at {last}): {alarm.detail}",
                   "the log rolled back or showed another history: do not re-provision or delete "
                   f"{view_path(config.outbox_path)} (it holds both signed checkpoints, the "
                   "evidence); report it to the backend's operator and the witnesses' operators, "
                   "and run `meterchain monitor` against the log")
    if held is None:
        if alarm is None:
            report.add("receipts", True, "no receipt verified yet (the backend sends one after each "
                       "cosigned checkpoint holding this gateway's readings)")
        return
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(held.updated))
    policy = "log-signed" if config.witness_policy is None else "cosigned per the witness policy"
    report.add("receipts", True, f"newest checkpoint verified: {held.checkpoint.size} leaves "
               f"({policy}), from the receipt of seq {held.seq} at position {held.index}, {when}")


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


async def _check_dlms_meters(report: CheckReport, sources: list[DlmsMeterSource],
                             sync: ClockSync) -> list[tuple[DlmsMeterSource, ClockCheck]]:
    """One session per DLMS meter, as the agent's cycle starts; its clock check for later."""
    clocks = []
    for source in sources:
        try:
            async with source.session() as session:
                status = await session.status(sync)
                import_wh = whole_wh(await session.client.read_register(ACTIVE_IMPORT_OBIS),
                                     ACTIVE_IMPORT_OBIS, 0)
                export_wh = 0  # status() proved it 0 when the profile does not capture it
                if status.layout.has_export:
                    export_wh = whole_wh(await session.client.read_register(ACTIVE_EXPORT_OBIS),
                                         ACTIVE_EXPORT_OBIS, 0)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the check
            detail = exc.diagnostics() if hasattr(exc, "diagnostics") else repr(exc)
            report.add(f"meter {source.name}", False, detail, dlms_failure_fix(exc, source))
            report.meters.append({"name": source.name, "ok": False})
            continue
        clocks.append((source, status.clock))
        period = status.layout.period
        report.meters.append({"name": source.name, "ok": True, "serial": status.serial,
                              "import_wh": import_wh, "export_wh": export_wh,
                              "capture_period": period,
                              "clock_drift_seconds": round(status.clock.drift, 1) or 0.0})
        report.add(f"meter {source.name}", True,
                   f"serial {status.serial}: import {import_wh} Wh, export {export_wh} Wh "
                   f"(DLMS, load profile every {period} s)")
    return clocks


def _check_meter_clock(report: CheckReport, source: DlmsMeterSource, check: ClockCheck) -> None:
    """Drift = meter clock - gateway clock, judged as the agent flags readings ``drifted``."""
    threshold = source.settings.clock_drift_threshold_seconds
    drift = f"{round(check.drift, 1) or 0.0:+.1f} s (±{check.uncertainty:.1f} s)"  # no -0.0
    name = f"meter clock {source.name}"
    if check.sync is ClockSync.UNSYNCED:
        report.add(name, False, f"drift {drift} against an unsynchronised gateway clock: "
                   "cannot judge", "synchronise the gateway's clock first (see clock), then "
                   "check again")
    elif not check.drifted:
        report.add(name, True, f"drift {drift}, within the {threshold} s threshold")
    elif abs(check.drift) - check.uncertainty > threshold:
        report.add(name, False, f"drift {drift}, beyond the {threshold} s threshold: its "
                   "readings are marked drifted",
                   f"meter clock is {abs(check.drift):.0f} s off: set it with the utility's "
                   "meter tool (the agent does not set meter clocks), then check again")
    else:
        report.add(name, False, f"drift {drift}, but the meter flags its own clock invalid or "
                   "doubtful: its readings are marked drifted",
                   "set the meter's clock with the utility's meter tool (it lost its time, e.g. "
                   "in a power cut without backup), then check again")


def _check_clock(report: CheckReport, sync: ClockSync, *, has_modbus: bool) -> None:
    if sync == ClockSync.SYNCED:
        report.add("clock", True, "gateway clock synchronised (NTP)" + (
            "; the SDM meters have no clock of their own, so there is no meter drift to measure"
            if has_modbus else ""))
    elif sync == ClockSync.UNSYNCED:
        report.add("clock", False, "gateway clock NOT synchronised",
                   "clock unsynchronised: check `timedatectl`, that NTP (UDP 123) reaches its "
                   "servers, and systemd-timesyncd or chrony runs; readings are marked unsynced")
    else:
        report.add("clock", True, "gateway clock state unknown (no adjtimex here)")


async def _publish_and_prove(report: CheckReport, config: AgentConfig, signer: Signer,
                             sources: list[MeterSource], dlms_answering: set[str],
                             record: dict[str, object] | None, timeout: float, clock: Clock,
                             clock_sync: Callable[[], ClockSync]) -> None:
    metrics = AgentMetrics()
    # As the agent opens it: beside the sequence reservation (agent/recovery.py), so the check's
    # reading is reserved before it is signed and a lost outbox is declared, not reused.
    outbox = await open_outbox(config.outbox_path, config.device_id, signer, config.key_path)
    try:
        await outbox.set_key_id(key_id(signer.public_key_der))
        latest = int(clock.now()) // config.interval_seconds * config.interval_seconds
        if sources:
            poller = Poller(device=config.device_id, signer=signer, sources=sources,
                            outbox=outbox, clock=clock, interval=config.interval_seconds,
                            metrics=metrics, clock_sync=clock_sync,
                            serials=MeterSerials.beside(config.outbox_path))
            await poller.poll_once(latest)  # the interval that just ended, as the agent signs it
        answering = [m for m in config.meters if m.name in dlms_answering]
        for profile_poller in dlms_pollers(
                answering, device=config.device_id, signer=signer, outbox=outbox, clock=clock,
                interval=config.interval_seconds, metrics=metrics, clock_sync=clock_sync,
                on_cycle=lambda: None):
            await profile_poller.poll_once()  # the profile's unsigned intervals, oldest first
        pending = await outbox.readings()
        if not pending:
            due = time.strftime("%H:%M:%S UTC", time.gmtime(latest + config.interval_seconds))
            report.add("publish", False, "nothing to publish: this interval is already signed "
                       "and acknowledged", f"run the check again after {due} (the next interval)")
            return
        target = pending[-1]
        publisher = Publisher(device=config.device_id, broker=config.broker, outbox=outbox,
                              clock=clock, metrics=metrics, ack_timeout=config.ack_timeout_seconds,
                              backoff=Backoff(),
                              guard=AckGuard(config.device_id, config.control_key, config.key_path))
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


async def _wait(condition: Callable[[], Awaitable[bool]], timeout: float, task: asyncio.Task[None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        if task.done():
            task.result()  # a crashed publisher raises here
        await asyncio.sleep(0.05)
    return False


async def _prove(report: CheckReport, config: AgentConfig, seq: int, signed: SignedReading, message: bytes,
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
    answer: dict[str, Any] | None = None  # JSON
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
        index = int(answer["leaf_index"])
        proof = [base64.b64decode(p) for p in answer["proof"]]
        merkle.verify_inclusion(index, checkpoint.size, leaf, proof, checkpoint.root)
    except (MeterchainError, ValueError, KeyError) as exc:
        report.add("logged", False, f"the inclusion proof does not verify: {exc}",
                   "the backend is not the one this gateway was provisioned with: stop and "
                   "report it")
        return
    report.logged_at, report.tree_size = index, checkpoint.size
    report.add("logged", True, f"logged at position {index} (checkpoint of {checkpoint.size} "
               f"leaves, signed by {verifier.name})")


def _get_json(url: str) -> tuple[int, dict[str, Any] | None, str]:
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
