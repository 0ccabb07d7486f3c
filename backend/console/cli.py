"""``meterchain backend console …``: console accounts, straight into the database: one-time
invitation links (an operator or auditor creates their own password and TOTP with it) and the list."""

from __future__ import annotations

import asyncio
import time

import typer
from meterchain.backend.console.tables import ROLES, ConsoleTables
from meterchain.backend.store import using_sqlite
from meterchain.backend.web.accounts import AccountError
from meterchain.contract.humantime import human_time
from rich.console import Console

app = typer.Typer(help="The operator console: invitations for operators and auditors, accounts.",
                  no_args_is_help=True)
console = Console(highlight=False, markup=False, soft_wrap=True)
DB = typer.Option("meterchain.db", "--db", help="The backend's SQLite database.")


@app.command("invite")
def invite(role: str = typer.Option("operator", "--role", help=f"One of {', '.join(ROLES)}."),
           scope: str = typer.Option("all", "--scope", help="'all' or 'utility:<id>'."),
           db: str = DB,
           base_url: str = typer.Option("http://127.0.0.1:8080", "--base-url",
                                        help="The backend's address as the operator reaches it.")) -> None:
    """A one-time link (valid 3 days) to create a console account with a password and TOTP."""
    try:
        token, made = asyncio.run(using_sqlite(db, lambda store: ConsoleTables(store).invite(
            role, scope, int(time.time()))))
    except AccountError as exc:
        Console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(1) from None
    console.print(f"{base_url.rstrip('/')}/console/invite/{token}")
    console.print(f"{made.role} over {made.scope}; valid until {human_time(made.expires)}, once")


@app.command("accounts")
def accounts(db: str = DB) -> None:
    """Every console account: user name, role, scope."""
    for a in asyncio.run(using_sqlite(db, lambda store: ConsoleTables(store).accounts())):
        console.print(f"{a.username}  {a.role}  {a.scope}")
