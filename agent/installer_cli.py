"""``meterchain agent provision``, ``scan`` and ``check``: the installer's commands."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # the commands import their modules lazily: `meterchain --help` stays fast
    from meterchain.agent.scan import Proposal, ScanReport
    from meterchain.agent.scan_dlms import DlmsScanReport, FoundDlmsMeter
    from meterchain.bridge.dlms import HdlcAddress

DEFAULT_CONFIG = Path("/etc/meterchain/agent.toml")
DEFAULT_KEY = "device-key.pem"  # beside the config (firstboot.sh makes it there)
AGENT_USER = "meterchain"


def _fail(message: str, hint: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    typer.echo(f"  fix: {hint}", err=True)
    return typer.Exit(code)


def provision(
    backend: str = typer.Option(..., "--backend", help="The backend's URL (https://…)."),
    token: str = typer.Option(..., "--token", help="The installer token (mct_…), usable once."),
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="The agent config to write."),
    meters: Path | None = typer.Option(None, "--meters", help="\\[\\[meters]] from `agent scan --out`."),
    identity: str | None = typer.Option(None, "--identity", help="Default: /etc/machine-id."),
    device_id: str | None = typer.Option(None, "--device-id", help="Default: from the identity."),
    outbox: Path | None = typer.Option(None, "--outbox", help="Default: /var/lib/meterchain/…"),
    new_key: bool = typer.Option(False, "--new-key", help="Make a new key even the first time."),
    owner: str = typer.Option(AGENT_USER, "--owner", help="The agent's user (owns key, config)."),
) -> None:
    """Enrol this gateway with an installer token; writes the agent config and provisioned.json."""
    import pwd

    from meterchain.agent.provision import FileKeyStore, ProvisionError, machine_identity
    from meterchain.agent.provision import provision as run

    try:
        pwd.getpwnam(owner)
        user: str | None = owner
    except KeyError:
        user = None  # no such user here (a test, a laptop): files stay the caller's
    key_path = config.parent / DEFAULT_KEY
    if outbox is None:
        system = config.parent == DEFAULT_CONFIG.parent
        outbox = Path("/var/lib/meterchain/outbox.sqlite") if system else config.parent / "outbox.sqlite"
    try:
        result = run(backend_url=backend, token=token, config_path=config,
                     keys=FileKeyStore(key_path, user), key_path=key_path, outbox_path=outbox,
                     identity=identity or machine_identity(), device=device_id,
                     meters_file=meters, new_key=new_key, owner=user)
    except ProvisionError as exc:
        raise _fail(str(exc), exc.hint) from None
    except PermissionError as exc:
        raise _fail(f"cannot write {exc.filename}", "run it with sudo") from None
    typer.echo(f"provisioned: device {result.device} ({result.event}, key {result.key_id[:16]}…, "
               f"valid from sequence {result.valid_from})")
    typer.echo(f"broker: {result.broker_url} (login {result.device})")
    typer.echo(f"config: {result.config_path} (mode 0600)   record: {result.record_path}")
    if result.moved_outbox:
        typer.echo(f"note: the outbox of the previous device id was kept at {result.moved_outbox}")
    if "meters" not in config.read_text():
        typer.echo("next: add meters (meterchain agent scan PORT --out meters.toml, then provision "
                   "again with --meters meters.toml, or paste them into the config)")
    else:
        typer.echo(f"next: meterchain agent check --config {config}")


class Protocol(StrEnum):
    MODBUS = "modbus"
    DLMS = "dlms"
    BOTH = "both"


def scan(
    port: str = typer.Argument(..., help="The serial port, e.g. /dev/ttyUSB0."),
    protocol: Protocol = typer.Option(
        Protocol.BOTH, "--protocol",
        help="both: Modbus first, then DLMS if no Modbus meter answered."),
    baud: list[int] = typer.Option([], "--baud", help="Baud rates to try (repeat); default: "
                                   "six for Modbus, four for DLMS."),
    ids: str = typer.Option("1-16", "--ids", help="Modbus ids: 1-16, or 1,5,7, or 1-247."),
    hdlc: str = typer.Option("1,1/16-31", "--hdlc", help="DLMS HDLC server addresses: logical "
                             "(1) or logical/physical (1/17), ranges 1/16-31, comma-separated."),
    out: Path | None = typer.Option(None, "--out", help="Write the proposed \\[\\[meters]] here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Find Modbus meters (ids x baud rates) and DLMS meters (HDLC addresses x baud rates)."""
    from meterchain.agent.provision import toml_text
    from meterchain.agent.scan import DEFAULT_BAUDRATES, probe_timeout
    from meterchain.agent.scan_dlms import (
        DEFAULT_DLMS_BAUDRATES,
        dlms_scan_bound,
        parse_hdlc_addresses,
    )

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a silent id is not an error
    try:
        id_list = _parse_ids(ids)
    except ValueError:
        raise typer.BadParameter(f"--ids {ids!r}: use 1-16, 1,5,7 or 1-247") from None
    try:
        addresses = parse_hdlc_addresses(hdlc)
    except ValueError as exc:
        raise typer.BadParameter(f"--hdlc {hdlc!r}: {exc}; use e.g. 1,1/16-31") from None
    modbus = protocol is not Protocol.DLMS
    dlms = protocol is not Protocol.MODBUS
    rates, dlms_rates = tuple(baud) or DEFAULT_BAUDRATES, tuple(baud) or DEFAULT_DLMS_BAUDRATES
    bound = (sum(probe_timeout(rate) for rate in rates) * len(id_list) if modbus else 0.0) + (
        dlms_scan_bound(dlms_rates, addresses) if dlms else 0.0)
    if not as_json:
        parts = [f"Modbus ids {ids} at {', '.join(map(str, rates))} baud"] if modbus else []
        if dlms:
            parts.append(f"DLMS HDLC addresses {hdlc} at {', '.join(map(str, dlms_rates))} baud")
        typer.echo(f"scanning {port}: {'; '.join(parts)} (probing takes at most {bound:.0f} s)")
    modbus_report, dlms_report = asyncio.run(
        _scan_line(port, rates if modbus else None, id_list, dlms_rates if dlms else None,
                   addresses))
    proposal, lines, causes = _scan_summary(modbus_report, dlms_report,
                                            dlms and dlms_report is None)
    found = any(r is not None and r.found for r in (modbus_report, dlms_report))
    seconds = round(sum(r.seconds for r in (modbus_report, dlms_report) if r is not None), 2)
    if as_json:
        if protocol is Protocol.BOTH:
            assert modbus_report is not None
            document: dict[str, object] = {
                "port": port, "modbus": modbus_report.to_json(),
                "dlms": dlms_report.to_json() if dlms_report else None, "seconds": seconds}
        else:
            single = modbus_report or dlms_report
            assert single is not None
            document = single.to_json()
        typer.echo(json.dumps(document | {"proposal": proposal.meters, "advice": proposal.advice},
                              indent=2))
    else:
        for line in lines:
            typer.echo(line)
        if not found:
            typer.echo(f"no meter answered on {port} ({seconds} s). Check:")
            for cause in causes:
                typer.echo(f"  - {cause}")
        else:
            typer.echo(f"scan took {seconds} s; proposed config:\n")
            typer.echo(toml_text({"meters": proposal.meters}) if proposal.meters else "(none)\n")
    if out is not None and proposal.meters:
        out.write_text(toml_text({"meters": proposal.meters}))
        os.chmod(out, 0o644)
        if not as_json:
            typer.echo(f"wrote {out}")
    if not found:
        raise typer.Exit(3)


async def _scan_line(
    port: str, rates: tuple[int, ...] | None, ids: list[int], dlms_rates: tuple[int, ...] | None,
    addresses: list[HdlcAddress],
) -> tuple[ScanReport | None, DlmsScanReport | None]:
    """Modbus first (when asked), then DLMS, on one port; a port that cannot be used stops both.

    Both: DLMS only when no Modbus meter answered (one line, one protocol: the agent reads DLMS
    meters only on a line without Modbus meters, so one found there could not be proposed).
    """
    from meterchain.agent.scan import SerialPortError, scan_port
    from meterchain.agent.scan_dlms import scan_dlms_port
    from meterchain.bridge.dlms.errors import PortError

    try:
        modbus = await scan_port(port, baudrates=rates, ids=ids) if rates else None
        dlms = None
        if dlms_rates and not (modbus and modbus.found):
            dlms = await scan_dlms_port(port, baudrates=dlms_rates, addresses=addresses)
    except (SerialPortError, PortError) as exc:
        raise _fail(f"cannot open {port}: {exc.diagnostics()}",
                    "wrong port? ls -l /dev/serial/by-id/; no permission? add the user to "
                    "'dialout'; in use? stop the agent (systemctl stop meterchain-agent)") from None
    return modbus, dlms


def _scan_summary(
    modbus: ScanReport | None, dlms: DlmsScanReport | None, dlms_skipped: bool
) -> tuple[Proposal, list[str], list[str]]:
    """The proposal (Modbus meters keep their bus; DLMS meters need a line without them), the
    report's lines, and what to check when the line is silent."""
    from meterchain.agent.scan import Proposal, empty_bus_causes, propose_meters
    from meterchain.agent.scan_dlms import empty_line_causes, propose_dlms_meters

    lines: list[str] = []
    proposal = Proposal([], [])
    causes: list[str] = []
    if modbus is not None:
        proposal = propose_meters(modbus.found)
        for meter in modbus.found:
            lines.append(f"found {meter.model} id {meter.modbus_id} at {meter.baudrate} baud: "
                         f"serial {meter.serial}, import {meter.import_wh} Wh, export "
                         f"{meter.export_wh} Wh, power {meter.power_w} W")
        lines += [f"trouble: {line}" for line in modbus.garbled + modbus.errors]
        causes = empty_bus_causes(modbus)
    if dlms is not None:
        taken = frozenset(str(m["port"]) for m in proposal.meters)
        dlms_proposal = propose_dlms_meters(dlms.found, taken)
        proposal = Proposal(proposal.meters + dlms_proposal.meters,
                            proposal.advice + dlms_proposal.advice)
        lines += [_dlms_line(meter) for meter in dlms.found]
        lines += [f"trouble: DLMS {line}" for line in dlms.garbled + dlms.errors]
        causes += [c for c in empty_line_causes(dlms, wiring=modbus is None) if c not in causes]
    elif modbus is not None and modbus.found and dlms_skipped:
        lines.append("Modbus meters answered: DLMS not scanned on this port (a line carries one "
                     "protocol; --protocol dlms scans it anyway)")
    lines += [f"advice: {line}" for line in proposal.advice]
    return proposal, lines, causes


def _dlms_line(meter: FoundDlmsMeter) -> str:
    name = f" (logical device name {meter.logical_device_name})" if meter.logical_device_name \
        else ""
    values = ", ".join(
        f"{what} {wh} Wh" for what, wh in (("import", meter.import_wh), ("export", meter.export_wh))
        if wh is not None)
    clock = ("no clock" if meter.clock_drift_seconds is None
             else f"clock {meter.clock_drift_seconds:+.1f} s off the gateway's")
    profile = (f"load profile every {meter.capture_period} s" if meter.profile == "ok"
               else f"load profile: {meter.profile}")
    return (f"found DLMS meter at HDLC {meter.address}, {meter.baudrate} baud: serial "
            f"{meter.serial or '-'}{name}, {values or 'no energy registers'}, {clock}, {profile}")


def check(
    config: Path = typer.Option(DEFAULT_CONFIG, "--config", help="The agent config."),
    report_path: Path | None = typer.Option(None, "--report", help="Write the JSON report here."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for ack and proof."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Self-test: read meters, check the clock, publish one reading, wait for ack and log proof."""
    from meterchain.agent.check import format_report, run_check
    from meterchain.agent.config import load_config
    from meterchain.agent.provision import RECORD_NAME
    from meterchain.agent.service import load_device_key
    from meterchain.contract.errors import MeterchainError

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # A DLMS meter's profile backlog is published at once: the MQTT client's "pending calls"
    # warnings are expected here, and the report says whether publishing worked.
    logging.getLogger("meterchain.agent.mqtt").setLevel(logging.ERROR)
    try:
        settings = load_config(config)
        signer = load_device_key(settings.key_path)
    except MeterchainError as exc:
        raise _fail(exc.diagnostics(), "provision first: meterchain agent provision --backend URL "
                    "--token TOKEN", 2) from None
    record_file = config.parent / RECORD_NAME
    record = json.loads(record_file.read_text()) if record_file.exists() else None
    result = asyncio.run(run_check(settings, signer, record=record, timeout=timeout))
    document = json.dumps(result.to_json(), indent=2)
    typer.echo(document if as_json else format_report(result))
    target = report_path or config.parent / f"commissioning-{result.checked_at}.json"
    try:
        target.write_text(document + "\n")
        if not as_json:
            typer.echo(f"report: {target}")
    except OSError as exc:
        typer.echo(f"warning: cannot write {target} ({exc.strerror})", err=True)
    if not result.ok:
        raise typer.Exit(1)


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 247:
            raise ValueError(text)
        ids.extend(range(first, last + 1))
    return sorted(set(ids))


def register(app: typer.Typer) -> None:
    """Attach the installer's commands to ``meterchain agent``."""
    app.command()(provision)
    app.command()(scan)
    app.command()(check)
