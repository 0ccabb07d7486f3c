"""``meterchain backend …`` (serve, enrol, rotate, revoke) and ``meterchain audit``."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import typer
from meterchain.backend import service
from meterchain.backend.api.ports import check_port_free
from meterchain.backend.config import BackendConfig
from meterchain.backend.console.cli import app as console_app
from meterchain.backend.devices import registry
from meterchain.backend.ingest.control_cli import app as control_app
from meterchain.backend.log.audit import AuditReport
from meterchain.backend.log.audit import audit as run_audit
from meterchain.backend.provisioning.cli import token as installer_token
from meterchain.backend.store import is_postgres, using_store
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.note import NoteSigner, NoteVerifier
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

app = typer.Typer(help="The backend: ingest, log, API, device enrolment.", no_args_is_help=True)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(exc: MeterchainError) -> typer.Exit:
    err.print(f"[red]error[/red] {exc.diagnostics()}")
    return typer.Exit(1)


@app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", help="TOML file (a \\[backend] table; sample: deploy/backend/backend.toml)."),
    db: str | None = typer.Option(None, "--db", help="SQLite database path."),
    broker: str | None = typer.Option(None, "--broker", help="mqtt://\\[user:pass@]host:port"),
    http_host: str | None = typer.Option(None, "--http-host"),
    http_port: int | None = typer.Option(None, "--http-port"),
    log_key: str | None = typer.Option(None, "--log-key", help="Log key file (created if missing)."),
    control_key: str | None = typer.Option(
        None, "--control-key", help="The key that signs acks (the sealer creates it); default: "
        "control.key beside the log key."),
    origin: str | None = typer.Option(None, "--origin", help="Log origin = the log key's name."),
    admin_token: str | None = typer.Option(None, "--admin-token", help="Or MC_ADMIN_TOKEN."),
    seal_interval: float | None = typer.Option(None, "--seal-interval", help="Seconds between seals."),
    seal_max: int | None = typer.Option(None, "--seal-max", help="Seal early at this many leaves."),
    role: list[str] | None = typer.Option(
        None, "--role", help="What this process runs: ingest, sealer, api or all (default); "
        "repeat or comma-separate, e.g. --role sealer,api. Exactly one sealer per log."),
    share_group: str | None = typer.Option(
        None, "--share-group", help="Ingest in this MQTT 5 share group ($share/<group>/...): "
        "several ingest workers split the readings."),
    client_id: str | None = typer.Option(
        None, "--client-id", help="MQTT client id (in a share group: -<host>-<pid> is added)."),
    check_processes: int | None = typer.Option(
        None, "--check-processes", help="Processes that check readings beside the one reading MQTT "
        "(default 1; 0: threads)."),
) -> None:
    """Run MQTT ingest, the sealer and the HTTP API (or the --role parts) until SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = BackendConfig.load(
            config, db=db, broker=broker, http_host=http_host, http_port=http_port,
            log_key=log_key, control_key=control_key, origin=origin, admin_token=admin_token,
            seal_interval=seal_interval, seal_max_leaves=seal_max,
            roles=role or None, share_group=share_group, client_id=client_id,
            check_processes=check_processes,
        )
        if "api" in settings.roles:  # before the log key, the broker or the database
            check_port_free(settings.http_host, settings.http_port)
        asyncio.run(service.serve(settings))
    except MeterchainError as exc:
        raise _fail(exc) from None


def _print_leaf(leaf: DeviceLeaf) -> None:
    console.print(
        f"{leaf.event.value} {leaf.device}: key {leaf.key_id.hex()[:16]}… valid from sequence "
        f"{leaf.valid_from} (a device leaf is pending in the log)"
    )


@app.command()
def enrol(
    device: str = typer.Argument(..., help="Device id (names its MQTT topic)."),
    public_key: Path = typer.Option(..., "--public-key", help="PEM or DER P-256 public key file."),
    db: str = typer.Option("meterchain.db", "--db"),
) -> None:
    """Enrol a device straight into the database."""
    try:
        key = public_key.read_bytes()
        leaf = asyncio.run(using_store(db, lambda s: registry.enrol(s, device, key, int(time.time()))))
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {public_key}: {exc.strerror}") from None
    except MeterchainError as exc:
        raise _fail(exc) from None
    _print_leaf(leaf)


@app.command()
def rotate(
    device: str = typer.Argument(...),
    public_key: Path = typer.Option(..., "--public-key", help="The new key (PEM or DER)."),
    valid_from: int | None = typer.Option(None, "--valid-from", help="First sequence of the new key."),
    db: str = typer.Option("meterchain.db", "--db"),
) -> None:
    """Rotate a device's key (default: valid after its last committed reading)."""
    try:
        key = public_key.read_bytes()
        leaf = asyncio.run(using_store(
            db, lambda s: registry.rotate(s, device, key, int(time.time()), valid_from)))
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {public_key}: {exc.strerror}") from None
    except MeterchainError as exc:
        raise _fail(exc) from None
    _print_leaf(leaf)


@app.command()
def revoke(
    device: str = typer.Argument(...),
    valid_from: int | None = typer.Option(None, "--valid-from", help="First sequence refused."),
    db: str = typer.Option("meterchain.db", "--db"),
) -> None:
    """Revoke a device's key (default: from after its last committed reading)."""
    try:
        leaf = asyncio.run(using_store(
            db, lambda s: registry.revoke(s, device, int(time.time()), valid_from)))
    except MeterchainError as exc:
        raise _fail(exc) from None
    _print_leaf(leaf)


def _verifier(value: str | None) -> NoteVerifier | None:
    """A public key (name+hash+base64), a private log key, or a file holding either."""
    if value is None:
        return None
    text = value
    if Path(value).is_file():
        text = Path(value).read_text().strip()
    try:
        if text.startswith("PRIVATE+KEY+"):
            return NoteSigner.parse(text).verifier
        return NoteVerifier.parse(text)
    except MeterchainError as exc:
        raise typer.BadParameter(f"not a log key: {exc}") from None


def audit(
    db: str = typer.Option(..., "--db", help="The backend's SQLite file or postgresql:// URL."),
    log_key: str | None = typer.Option(
        None, "--log-key", help="Log public key (or private key file) to check signatures."),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="The log only: rebuild it from its leaves and compare every "
        "stored node, checkpoint and batch header (skips re-verifying reading signatures)."),
) -> None:
    """Re-verify readings, leaves, the tree, checkpoints and the batch chain; name what differs.

    Reports only: nothing is repaired (a rebuild that writes would be its own command)."""
    verifier = _verifier(log_key)
    if not is_postgres(db) and not Path(db).exists():
        raise typer.BadParameter(f"no database at {db}")

    async def go() -> AuditReport:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=err, transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done, total=total)

            return await using_store(
                db, lambda s: run_audit(s, verifier, progress, log_only=rebuild))

    report = asyncio.run(go())
    for finding in report.findings:
        console.print(f"[red]MISMATCH[/red] {finding}")
    note = "" if report.signatures_checked else " (signatures not checked: no --log-key)"
    note += " (log only: readings not re-verified)" if rebuild else ""
    status = "[green]ok[/green]" if report.ok else f"[red]{len(report.findings)} mismatches[/red]"
    console.print(
        f"audit {status}: {report.readings} readings, {report.leaves} leaves, {report.nodes} "
        f"nodes, {report.checkpoints} checkpoints, {report.batches} batches, {report.erased} "
        f"erased leaves (stored hashes used){note}"
    )
    if not report.ok:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Attach ``backend …`` and the top-level ``audit``."""
    app.command("token")(installer_token)
    app.add_typer(control_app, name="control-key")
    app.add_typer(console_app, name="console")  # operator console invitations and accounts
    root.add_typer(app, name="backend")
    root.command("audit")(audit)
