"""``meterchain backend console …``: console accounts, straight into the database: one-time
invitation links (an operator or auditor creates their own password and TOTP with it) and the list."""

from __future__ import annotations

import asyncio
import time

import typer
from meterchain.backend.console.tables import ROLES, ConsoleTables
from meterchain.backend.store import SqliteStore, using_sqlite
from meterchain.backend.utility.tables import UtilityTables
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


@app.command("dead-letters")
def dead_letters(db: str = DB) -> None:
    """Every webhook's dead deliveries (the console's Webhooks page): id, key, attempts, error."""
    async def work(store: SqliteStore) -> list[str]:
        tables = UtilityTables(store)
        out = []
        for hook in await tables.webhooks(None):
            for d in await tables.deliveries(hook.id, "dead", 0, 1000):
                out.append(f"{hook.id} {d.id}  {d.idempotency_key}  {d.attempts} attempts, gave up "
                           f"{human_time(d.finished)}: {d.last_error}")
        return out

    for line in asyncio.run(using_sqlite(db, work)) or ["no dead letters"]:
        console.print(line)


@app.command("replay")
def replay(hook: str = typer.Argument(..., help="The webhook id (wh-…)."),
           delivery: int = typer.Argument(..., help="The dead delivery's id."), db: str = DB) -> None:
    """Send a dead delivery again, as POST /api/v1/webhooks/{hook}/deliveries/{id}/replay does."""
    done = asyncio.run(using_sqlite(db, lambda store: UtilityTables(store).replay(hook, delivery,
                                                                                 int(time.time()))))
    if not done:
        Console(stderr=True).print(f"error: delivery {delivery} of {hook} is not in the dead-letter list "
                                   f"(see: meterchain backend console dead-letters --db {db})")
        raise typer.Exit(1)
    console.print(f"delivery {delivery} of {hook} is pending again; the webhook worker sends it next")
