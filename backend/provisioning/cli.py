"""``meterchain backend token``: issue a one-time installer token, optionally as a QR code."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import typer
from meterchain.backend.provisioning.routes import provision_command, qr_svg
from meterchain.backend.provisioning.tokens import (
    DEFAULT_TOKEN_TTL,
    ProvisioningError,
    Scope,
    issue_token,
)
from meterchain.backend.store import using_sqlite
from meterchain.contract.humantime import human_time


def token(
    scope: str = typer.Option(..., "--scope", help="utility:ID or community:ID"),
    ttl: int = typer.Option(DEFAULT_TOKEN_TTL, "--ttl", help="Seconds until the token expires."),
    note: str = typer.Option("", "--note", help="Who or which job it is for (kept with it)."),
    public_url: str = typer.Option("", "--public-url", help="The backend's URL for installers."),
    qr: bool = typer.Option(False, "--qr", help="Also print the command as a QR code."),
    svg: Path | None = typer.Option(None, "--svg", help="Write the QR code as an SVG file."),
    db: str = typer.Option("meterchain.db", "--db"),
) -> None:
    """Issue a one-time installer token (shown once; the backend keeps only its hash)."""

    try:
        issued = asyncio.run(using_sqlite(db, lambda store: issue_token(
            store, Scope.parse(scope), int(time.time()), ttl=ttl, note=note)))
    except ProvisioningError as exc:
        typer.echo(f"error: {exc} ({exc.hint})", err=True)
        raise typer.Exit(1) from None
    command = provision_command(public_url.rstrip("/"), issued.token)
    expires = human_time(issued.expires)
    typer.echo(f"token: {issued.token}")
    typer.echo(f"scope: {issued.scope}   expires: {expires}   usable once")
    typer.echo(f"on the gateway: {command}")
    if qr:
        import segno  # deliberately here: ~60 ms that every `meterchain` start would pay otherwise

        out = io.StringIO()
        segno.make(command, error="m").terminal(out=out, compact=True)
        typer.echo(out.getvalue(), nl=False)
    if svg is not None:
        svg.write_text(qr_svg(command))
        typer.echo(f"QR code: {svg}")
