"""``meterchain backend households …``: dashboard access for households, straight into the database
(the same operations as ``/api/v1/households/...``): invitation and reset links, time zones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer
from meterchain.backend.access.model import PartyError
from meterchain.backend.erasure.rules import erase_household, utc_day
from meterchain.backend.erasure.tables import ErasureRecord, ErasureTables
from meterchain.backend.store import SqliteStore, using_sqlite
from meterchain.backend.web.accounts import AccountError
from meterchain.backend.web.tables import WebTables
from meterchain.contract.humantime import human_time
from rich.console import Console

T = TypeVar("T")
app = typer.Typer(help="Household dashboard access: invitation and reset links, time zones, erasure.",
                  no_args_is_help=True)
console = Console(highlight=False, markup=False, soft_wrap=True)
DB = typer.Option("meterchain.db", "--db", help="The backend's SQLite database.")
BASE = typer.Option("http://127.0.0.1:8080", "--base-url",
                    help="The dashboard's address as households reach it.")


def _run(action: Callable[[WebTables], Awaitable[T]], db: str) -> T:
    try:
        return asyncio.run(using_sqlite(db, lambda store: action(WebTables(store))))
    except AccountError as exc:
        Console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(1) from None


@app.command("invite")
def invite(household: str = typer.Argument(..., metavar="HOUSEHOLD"), db: str = DB,
           base_url: str = BASE) -> None:
    """A one-time link (valid 7 days) with which the household creates its login."""
    token, link = _run(lambda t: t.create_link("invite", household, None, int(time.time())), db)
    console.print(f"{base_url.rstrip('/')}/invite/{token}")
    console.print(f"valid until {human_time(link.expires)}; hand it to household {household}")


@app.command("reset-link")
def reset_link(household: str = typer.Argument(..., metavar="HOUSEHOLD"),
               username: str = typer.Argument(...), db: str = DB, base_url: str = BASE) -> None:
    """A one-time link (valid 24 h) to choose a new password; it ends the login's sessions."""
    token, _ = _run(lambda t: t.create_link("reset", household, username, int(time.time())), db)
    console.print(f"{base_url.rstrip('/')}/reset/{token}")


@app.command("timezone")
def timezone(household: str = typer.Argument(..., metavar="HOUSEHOLD"),
             zone: str = typer.Argument(..., help="IANA name, e.g. Europe/Berlin"),
             db: str = DB) -> None:
    """Set the household's local time zone (its days, weeks and months)."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"unknown time zone {zone!r}") from None
    _run(lambda t: t.set_timezone(household, zone), db)
    console.print(f"household {household}: {zone}")


@app.command("erase")
def erase(household: str = typer.Argument(..., metavar="HOUSEHOLD"), db: str = DB,
          confirm: bool = typer.Option(False, "--confirm",
                                       help="Really erase (without it: only say what would go)."),
          by: str = typer.Option("cli", "--by", help="Who asked, for the erasure record.")) -> None:
    """Erase the household's data: readings' values and signed messages (their leaf hashes stay
    in the log), logins, sessions, links; its API keys are revoked. An erasure record is kept."""
    async def go(store: SqliteStore) -> tuple[int, ErasureRecord | None]:
        if not confirm:
            return await ErasureTables(store).erasable(household), None
        return 0, await erase_household(store, household, f"operator:{by}"[:200],
                                        int(time.time()))

    try:
        count, record = asyncio.run(using_sqlite(db, go))
    except PartyError as exc:
        Console(stderr=True).print(f"error: {exc}")
        raise typer.Exit(1) from None
    if not confirm:
        Console(stderr=True).print(
            f"household {household}: {count} stored readings would lose their data, and its "
            "logins go; nothing was erased. Run again with --confirm to erase.")
        raise typer.Exit(2)
    if record is None:
        console.print(f"household {household}: nothing left to erase (erased before)")
        return
    ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in record.ranges)
    console.print(f"household {household}: erasure {record.id} on {utc_day(record.time)}: "
                  f"{record.leaves} reading leaves erased (leaf indices {ranges or 'none sealed'}"
                  f"; {record.unsealed} not sealed yet), {record.logins} logins removed")
