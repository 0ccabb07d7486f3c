"""``meterchain agent provision``, ``scan`` and ``check``: the installer's commands."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import typer

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
    meters: Path | None = typer.Option(None, "--meters", help="[[meters]] from `agent scan --out`."),
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


def scan(
    port: str = typer.Argument(..., help="The serial port, e.g. /dev/ttyUSB0."),
    baud: list[int] = typer.Option([], "--baud", help="Baud rates to try (repeat); default six."),
    ids: str = typer.Option("1-16", "--ids", help="Modbus ids: 1-16, or 1,5,7, or 1-247."),
    out: Path | None = typer.Option(None, "--out", help="Write the proposed [[meters]] here."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Find Modbus meters on a serial line (ids x baud rates, one short request each)."""
    from meterchain.agent.provision import toml_text
    from meterchain.agent.scan import (
        DEFAULT_BAUDRATES,
        SerialPortError,
        empty_bus_causes,
        probe_timeout,
        propose_meters,
        scan_port,
    )

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # a silent id is not an error
    try:
        id_list = _parse_ids(ids)
    except ValueError:
        raise typer.BadParameter(f"--ids {ids!r}: use 1-16, 1,5,7 or 1-247") from None
    rates = tuple(baud) or DEFAULT_BAUDRATES
    bound = sum(probe_timeout(rate) for rate in rates) * len(id_list)
    if not as_json:
        typer.echo(f"scanning {port}: ids {ids} at {', '.join(map(str, rates))} baud "
                   f"(probing takes at most {bound:.0f} s)")
    try:
        report = asyncio.run(scan_port(port, baudrates=rates, ids=id_list))
    except SerialPortError as exc:
        raise _fail(f"cannot open {port}: {exc.diagnostics()}",
                    "wrong port? ls -l /dev/serial/by-id/; no permission? add the user to "
                    "'dialout'; in use? stop the agent (systemctl stop meterchain-agent)") from None
    proposal = propose_meters(report.found)
    if as_json:
        typer.echo(json.dumps(report.to_json() | {"proposal": proposal.meters,
                                                  "advice": proposal.advice}, indent=2))
    else:
        for meter in report.found:
            typer.echo(f"found {meter.model} id {meter.modbus_id} at {meter.baudrate} baud: serial "
                       f"{meter.serial}, import {meter.import_wh} Wh, export {meter.export_wh} Wh, "
                       f"power {meter.power_w} W")
        for line in report.garbled + report.errors:
            typer.echo(f"trouble: {line}")
        for line in proposal.advice:
            typer.echo(f"advice: {line}")
        if not report.found:
            typer.echo(f"no meter answered on {port} ({report.seconds} s). Check:")
            for cause in empty_bus_causes(report):
                typer.echo(f"  - {cause}")
        else:
            typer.echo(f"scan took {report.seconds} s; proposed config:\n")
            typer.echo(toml_text({"meters": proposal.meters}))
    if out is not None and proposal.meters:
        out.write_text(toml_text({"meters": proposal.meters}))
        os.chmod(out, 0o644)
        if not as_json:
            typer.echo(f"wrote {out}")
    if not report.found:
        raise typer.Exit(3)


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
