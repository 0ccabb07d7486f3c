"""``meterchain backend control-key show|rotate|retire``: the key that signs every ack."""

from __future__ import annotations

import asyncio

import typer
from meterchain.backend.ingest.control_key import (
    ControlKeyError,
    read_control_keys,
    retire_previous,
    rotate_control_key,
)
from meterchain.backend.store import using_store

app = typer.Typer(help="The backend's control key (signs acks to gateways).",
                  no_args_is_help=True)
KEY = typer.Option("control.key", "--key", help="The control key file (config: control_key).")


@app.command()
def show(key: str = KEY) -> None:
    """Print the control key(s) in use: what `agent provision` hands to gateways."""
    try:
        keys = read_control_keys(key)
    except ControlKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"current:  {keys[0].verifier}")
    for previous in keys[1:]:
        typer.echo(f"previous: {previous.verifier} (still signing: rotation in progress)")


@app.command()
def rotate(key: str = KEY,
           origin: str = typer.Option("meterchain.local/log", "--origin", help="The log origin."),
           db: str = typer.Option("meterchain.db", "--db")) -> None:
    """Make a new control key and log it; acks are signed by the new and the old key until
    `retire`. Restart the ingest workers afterwards."""
    try:
        signer = asyncio.run(using_store(db, lambda s: rotate_control_key(key, origin, s)))
    except ControlKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"new control key: {signer.verifier}\nrestart the ingest workers; gateways adopt "
               "it from their next ack; then run `meterchain backend control-key retire`")


@app.command()
def retire(key: str = KEY) -> None:
    """Stop signing with the previous control key (after every gateway got an ack since the
    rotation: check the fleet's last-seen times). Restart the ingest workers afterwards."""
    typer.echo("previous control key deleted" if retire_previous(key)
               else "no previous control key: nothing to retire")
