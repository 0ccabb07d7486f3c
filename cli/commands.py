"""Which command lives where. Each part owns a typer sub-app in its own ``cli`` module."""

from __future__ import annotations

import typer
from meterchain.agent import cli as agent_cli
from meterchain.backend import cli as backend_cli
from meterchain.backend.access import cli as access_cli
from meterchain.backend.settlement import cli as settlement_cli
from meterchain.backend.web import cli as households_cli
from meterchain.bridge import cli as bridge_cli
from meterchain.cli import demo, utility_cmd, verify_cmd
from meterchain.witness import cli as witness_cli
from meterchain.witness import monitor_cli


def register(app: typer.Typer) -> None:
    """Attach every part's commands to the top-level app."""
    app.add_typer(bridge_cli.app, name="emulate")
    app.add_typer(agent_cli.app, name="agent")
    backend_cli.register(app)
    backend_cli.app.add_typer(access_cli.app, name="access")  # meterchain backend access …
    backend_cli.app.add_typer(households_cli.app, name="households")  # dashboard access links
    app.add_typer(settlement_cli.app, name="settle")  # meterchain settle --verify, run, bills, …
    verify_cmd.register(app)
    app.add_typer(utility_cmd.app, name="utility")  # meterchain utility pull|verify
    demo.register(app)
    app.add_typer(witness_cli.app, name="witness")  # meterchain witness init|serve|key
    app.command("monitor")(monitor_cli.monitor)  # meterchain monitor URL
