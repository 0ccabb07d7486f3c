"""``meterchain agent keygen`` and ``meterchain agent run``."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import typer
from meterchain.contract.errors import MeterchainError
from meterchain.contract.signing import generate_private_key_pem, key_id, load_signer, public_key_pem

app = typer.Typer(
    help="The gateway agent: device key, meter polling, signed readings.", no_args_is_help=True
)


def write_private_key(path: Path, pem: bytes, *, force: bool) -> None:
    """Write a key readable by its owner only (0600), never through a moment of wider mode.

    Without ``force`` an existing file is refused: overwriting a device key orphans every
    enrolment made with it. With ``force`` the key is written beside it and renamed over it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if not force else path.with_name(f".{path.name}.new")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if force and target.exists():
        target.unlink()
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only remove bits; make the mode exact
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(target, path)


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Where to write the private key (PEM, mode 0600)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key file."),
) -> None:
    """Create the device's P-256 key; prints the public key and key id to enrol at the backend."""
    pem = generate_private_key_pem()
    try:
        write_private_key(out, pem, force=force)
    except FileExistsError:
        typer.echo(
            f"error: {out} exists; pass --force to replace it (old enrolments break)", err=True
        )
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"error: cannot write {out}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    spki = load_signer(pem).public_key_der
    public_pem = public_key_pem(spki)
    typer.echo(f"private key: {out} (mode 0600)")
    typer.echo(f"key id: {key_id(spki).hex()}")
    typer.echo(f"public key (base64 SPKI DER): {base64.b64encode(spki).decode()}")
    typer.echo(public_pem.decode().rstrip())


@app.command()
def run(
    config: Path = typer.Option(..., "--config", help="The agent's TOML config file."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=1, max=65535, help="Serve Prometheus /metrics on 127.0.0.1."
    ),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Poll the meters, sign readings, keep them in the outbox until the backend acks them."""
    from meterchain.agent.config import load_config
    from meterchain.agent.service import run_agent

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        run_agent(load_config(config), metrics_port=metrics_port)
    except MeterchainError as exc:
        typer.echo(f"error: {exc.diagnostics()}", err=True)
        raise typer.Exit(2) from None


from meterchain.agent.installer_cli import register as _register_installer  # noqa: E402

_register_installer(app)  # provision, scan, check (agent/installer_cli.py)
