"""``meterchain witness init|serve|key``: one command and one config file per witness."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import typer
from meterchain.contract.errors import MeterchainError
from meterchain.witness.config import WitnessConfig, is_postgres, load_config, write_new
from meterchain.witness.http import serve as serve_http
from meterchain.witness.store import SchemaError, WitnessStore
from meterchain.witness.store_pg import PgWitnessStore

app = typer.Typer(help="A C2SP tlog-witness: cosigns a log's checkpoints that are consistent with "
                       "what it cosigned before (docs/witness.md).", no_args_is_help=True)

#: Test hook (tests/witness/test_witness_crash.py): "<step>:<n>" SIGKILLs this process the n-th
#: time add-checkpoint reaches <step> (checked, written, committed).
CRASH_ENV = "MC_WITNESS_CRASH_AT"


def _crash_hook() -> Callable[[str], None] | None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None
    step, _, count = spec.partition(":")
    remaining = [int(count or "1")]

    def between(reached: str) -> None:
        if reached == step:
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return between


@app.command()
def init(
    directory: Path = typer.Option(Path("."), "--dir", help="Where witness.key and witness.toml go."),
    name: str = typer.Option(..., "--name", help="The witness's name, a schema-less URL (witness.example/w1)."),
    log_key: list[str] = typer.Option([], "--log", help="A log's public key (vkey) to witness; repeatable."),
    listen: str = typer.Option("127.0.0.1:7380", "--listen", help="host:port to serve on."),
) -> None:
    """Create a witness key and its config file; print the witness's public key (its vkey)."""
    try:
        config_path, cosigner = write_new(directory, name, log_key, listen)
    except MeterchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {config_path} and {directory / 'witness.key'} (keep it secret)")
    typer.echo(f"witness public key: {cosigner.key}")


@app.command()
def key(config: Path = typer.Option(Path("witness.toml"), "--config", "-c", help="The witness config.")) -> None:
    """Print the witness's public key (vkey), for policy files: witness <name> <vkey> [<url>]."""
    try:
        typer.echo(str(load_config(config).cosigner.key))
    except MeterchainError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(config: Path = typer.Option(Path("witness.toml"), "--config", "-c", help="The witness config.")) -> None:
    """Serve add-checkpoint and the monitoring checkpoint until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_config(config)
        asyncio.run(_serve(settings))
    except (MeterchainError, SchemaError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _serve(settings: WitnessConfig) -> None:
    if is_postgres(settings.db):
        pg = await PgWitnessStore.open(str(settings.db))
        try:
            await serve_http(settings, pg)
        finally:
            await pg.close()
        return
    store = WitnessStore(settings.db, between=_crash_hook())
    try:
        await serve_http(settings, store)
    finally:
        store.close()
