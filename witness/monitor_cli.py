"""``meterchain monitor URL --log-key KEY [--policy FILE]``: the monitor's command (monitor.py)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier
from meterchain.contract.tlog_policy import WitnessPolicy, parse_policy
from meterchain.witness.monitor import Monitor, MonitorAlert, alert
from prometheus_client import Counter, Gauge, start_http_server

FAILURES = Counter("meterchain_monitor_failures", "Checks a followed log failed", ["check"])
OK = Gauge("meterchain_monitor_ok", "1 while every checkpoint so far passed")
SIZE = Gauge("meterchain_monitor_tree_size", "Size of the last checkpoint that passed")


def _key(value: str) -> NoteVerifier:
    path = Path(value)
    text = path.read_text().strip() if path.is_file() else value
    try:
        return NoteVerifier.parse(text)
    except MeterchainError as exc:
        raise typer.BadParameter(f"not a log public key (name+hash+base64): {exc}") from None


def read_policy(path: Path | None) -> WitnessPolicy | None:
    """A ``--policy`` file (C2SP tlog-policy): the witnesses and the quorum to require."""
    if path is None:
        return None
    try:
        return parse_policy(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read policy file {path}: {exc}") from None
    except MeterchainError as exc:
        raise typer.BadParameter(f"policy file {path}: {exc.diagnostics()}") from None


def monitor(
    url: str = typer.Argument(..., help="The log's base URL (serving /checkpoint and /tile/...)."),
    log_key: str = typer.Option(..., "--log-key", help="The log's public key, or a file holding it."),
    policy_file: Path | None = typer.Option(None, "--policy", help="Witness policy (C2SP tlog-policy) to require."),
    state: Path | None = typer.Option(None, "--state", help="Keep what was verified here, to resume from."),
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between polls."),
    once: bool = typer.Option(False, "--once", help="Check the newest checkpoint once and exit."),
    webhook: str | None = typer.Option(None, "--webhook", help="POST a JSON alert here on a failure."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics here."),
) -> None:
    """Follow a log: signature, witness quorum, no rollback, no fork, the tree rebuilt from tiles.

    Exit 1 on the first failure (after the log line, metric and webhook); 0 after --once passes.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    watcher = Monitor(url, _key(log_key), read_policy(policy_file), state=state)
    if metrics_port is not None:
        start_http_server(metrics_port)
    OK.set(1)
    while True:
        try:
            checkpoint = watcher.poll()
        except MonitorAlert as failure:
            FAILURES.labels(failure.check).inc()
            OK.set(0)
            alert(failure, url, webhook)
            raise typer.Exit(1) from None
        SIZE.set(checkpoint.size)
        logging.getLogger("meterchain.monitor").info("%s: checkpoint %d verified", url, checkpoint.size)
        if once:
            return
        time.sleep(interval)
