"""``meterchain verify BUNDLE --log-key KEY``: check a proof bundle offline."""

from __future__ import annotations

from pathlib import Path

import typer
from meterchain.contract.bundle import BundleError, verify_bundle
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_interval
from meterchain.contract.note import NoteVerifier
from meterchain.contract.tlog_policy import WitnessPolicy
from meterchain.witness.monitor_cli import read_policy
from rich.console import Console

console = Console(highlight=False)


def read_log_key(value: str) -> NoteVerifier:
    """A log key given inline (``name+hash+base64``) or as a file holding it."""
    text = value
    path = Path(value)
    if "+" not in value or path.is_file():
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise typer.BadParameter(f"cannot read log key file {value}: {exc.strerror}") from None
    try:
        return NoteVerifier.parse(text)
    except MeterchainError as exc:
        raise typer.BadParameter(f"not a log public key (name+hash+base64): {exc}") from None


def witnesses_line(policy: WitnessPolicy, cosigners: tuple[str, ...]) -> str:
    """Who cosigned, against what the policy requires."""
    return f"witnesses: {', '.join(cosigners) or 'none'} cosigned (policy: {policy.describe()})"


def verify(
    bundle: Path = typer.Argument(..., help="A proof bundle file (.tlog-proof).", exists=False),
    log_key: str = typer.Option(
        ..., "--log-key", help="The log's public key, name+hash+base64, or a file holding it."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing; exit status only."),
    policy_file: Path | None = typer.Option(
        None, "--policy", help="A witness policy (C2SP tlog-policy): require its quorum of cosignatures."),
) -> None:
    """Check a reading's proof bundle offline; exit 0 only if every check holds."""
    verifier = read_log_key(log_key)
    policy = read_policy(policy_file)
    try:
        text = bundle.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]FAIL[/red] encoding: cannot read {bundle}: {exc}")
        raise typer.Exit(2) from None
    try:
        result = verify_bundle(text, verifier, policy)
    except BundleError as exc:
        if not quiet:
            # Only what the policy checked is ok: a high-S signature fails while decoding, before
            # the checks that precede low-s in CHECKS have run.
            for check in exc.passed:
                console.print(f"[green]ok[/green]   {check}")
            console.print(f"[red]FAIL[/red] {exc.check}: {exc}")
        raise typer.Exit(1) from None
    if not quiet and policy is not None:
        console.print(witnesses_line(policy, result.cosigners))
    if not quiet:
        r = result.reading.reading
        for check in result.passed:
            console.print(f"[green]ok[/green]   {check}")
        console.print(
            f"verified: reading {r.device}#{r.seq} of meter {r.meter} for "
            f"{human_interval(r.start, r.end)} import {r.import_wh} Wh export {r.export_wh} Wh, "
            f"signed by key {result.key.key_id.hex()[:16]}…, logged at index {result.leaf_index} "
            f"in checkpoint {result.checkpoint.origin} size {result.checkpoint.size}"
            + (f"; counts for metering point {result.point} (logged binding)" if result.point else "")
        )


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
