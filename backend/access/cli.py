"""``meterchain backend access …``: parties, metering points, bindings, grants and API keys,
straight into the database (the same operations as the admin API)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import typer
from meterchain.backend.access.model import (
    ApiKey,
    MeterBinding,
    Occupancy,
    PartyError,
    Principal,
    key_kind,
    point_kind,
)
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.store import using_sqlite
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_interval, human_time
from rich.console import Console
from rich.markup import escape

T = TypeVar("T")
app = typer.Typer(help="Who may see what: parties, metering points, bindings, grants, API keys.",
                  no_args_is_help=True)
console = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DB = typer.Option("meterchain.db", "--db", help="The backend's SQLite database.")
_ROOT = Principal.root()
_POINTS = typer.Option([], "--point", help="Repeat for each metering point.")
_COMMUNITIES = typer.Option([], "--community", help="Repeat for each community.")


def utc_seconds(text: str, what: str = "time") -> int:
    """UTC seconds from an integer or an ISO 8601 time with a zone (``2025-03-01T10:00:00Z``)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{what} {text!r} is neither UTC seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise typer.BadParameter(
            f"{what} {text!r} has no time zone; add Z (UTC) or an offset such as +01:00")
    return int(moment.timestamp())


def _run(action: Callable[[PartyTables], Awaitable[T]], db: str) -> T:
    try:
        return asyncio.run(using_sqlite(db, lambda store: action(PartyTables(store))))
    except MeterchainError as exc:
        err.print(f"[red]error[/red] {escape(exc.diagnostics())}")
        raise typer.Exit(1) from None


def _now() -> int:
    return int(time.time())


def _period(valid_from: int, valid_to: int | None) -> str:
    if valid_to is None:
        return f"from {human_time(valid_from)} on"
    return human_interval(valid_from, valid_to)


def _print_binding(b: MeterBinding | Occupancy) -> None:
    what = (f"meter {b.device}/{b.meter}" if isinstance(b, MeterBinding)
            else f"household {b.household}")
    console.print(f"{b.metering_point} <- {what} over {_period(b.valid_from, b.valid_to)} (#{b.id})")


def _print_key(key: ApiKey, token: str | None = None) -> None:
    console.print(f"key {key.id}: {key.kind.value} {key.subject} {key.label!r}"
                  + (f", expires {human_time(key.expires)}" if key.expires is not None else "")
                  + (f", revoked {human_time(key.revoked)}" if key.revoked is not None else "")
                  + (f", last used {human_time(key.last_used)}" if key.last_used is not None else "")
                  + (f", replaces {key.replaces}" if key.replaces else ""))
    if token is not None:
        console.print(f"token (shown once, only its SHA-256 is kept): {token}")


@app.command("add-utility")
def add_utility(ident: str = typer.Argument(..., metavar="ID"),
                name: str = typer.Option("", "--name"), db: str = DB) -> None:
    """Add a utility."""
    _run(lambda t: t.add_utility(ident, name, _now()), db)
    console.print(f"utility {ident}")


@app.command("add-community")
def add_community(ident: str = typer.Argument(..., metavar="ID"),
                  utility: str = typer.Option(..., "--utility"),
                  name: str = typer.Option("", "--name"), db: str = DB) -> None:
    """Add an energy community of a utility."""
    _run(lambda t: t.add_community(ident, utility, name, _now()), db)
    console.print(f"community {ident} of utility {utility}")


@app.command("add-household")
def add_household(ident: str = typer.Argument(..., metavar="ID"),
                  community: str = typer.Option(..., "--community"),
                  name: str = typer.Option("", "--name"), db: str = DB) -> None:
    """Add a household to a community."""
    _run(lambda t: t.add_household(ident, community, name, _now()), db)
    console.print(f"household {ident} in community {community}")


@app.command("add-point")
def add_point(ident: str = typer.Argument(..., metavar="ID", help="MaLo/MeLo id or free text."),
              utility: str = typer.Option(..., "--utility"),
              kind: str = typer.Option("consumption", "--kind",
                                       help="consumption, generation, heat-pump, ev-charger, battery, other"),
              community: str | None = typer.Option(None, "--community"), db: str = DB) -> None:
    """Register a metering point to a utility (and optionally a community)."""
    try:
        parsed = point_kind(kind)
    except PartyError as exc:
        raise typer.BadParameter(str(exc)) from None
    _run(lambda t: t.add_metering_point(ident, utility, community, parsed, _now()), db)
    console.print(f"metering point {ident} ({parsed.value}) of utility {utility}")


@app.command("bind-meter")
def bind_meter(point: str = typer.Argument(...), device: str = typer.Option(..., "--device"),
               meter: str = typer.Option(..., "--meter", help="Meter serial as in its readings."),
               valid_from: str = typer.Option(..., "--from", help="UTC seconds or ISO 8601."),
               valid_to: str | None = typer.Option(None, "--to", help="Exclusive; omit: open."),
               db: str = DB) -> None:
    """Bind a meter to a metering point over [from, to): its readings ending then belong to it."""
    start = utc_seconds(valid_from, "--from")
    stop = None if valid_to is None else utc_seconds(valid_to, "--to")
    _print_binding(_run(lambda t: t.bind_meter(point, device, meter, start, stop, _now()), db))


@app.command("end-meter")
def end_meter(point: str = typer.Argument(...),
              at: str = typer.Option(..., "--at", help="The exchange/removal time (exclusive)."),
              db: str = DB) -> None:
    """End a metering point's open meter binding (a meter exchange: then bind-meter the new one)."""
    stop = utc_seconds(at, "--at")
    _print_binding(_run(lambda t: t.end_meter_binding(point, stop), db))


@app.command("move-in")
def move_in(point: str = typer.Argument(...), household: str = typer.Option(..., "--household"),
            valid_from: str = typer.Option(..., "--from"),
            valid_to: str | None = typer.Option(None, "--to"), db: str = DB) -> None:
    """A household holds a metering point over [from, to)."""
    start = utc_seconds(valid_from, "--from")
    stop = None if valid_to is None else utc_seconds(valid_to, "--to")
    _print_binding(_run(lambda t: t.add_occupancy(point, household, start, stop, _now()), db))


@app.command("move-out")
def move_out(point: str = typer.Argument(...), at: str = typer.Option(..., "--at"),
             db: str = DB) -> None:
    """End a metering point's open occupancy (the household moves out)."""
    stop = utc_seconds(at, "--at")
    _print_binding(_run(lambda t: t.end_occupancy(point, stop), db))


@app.command("grant")
def grant(ident: str = typer.Argument(..., metavar="ID"),
          expires: str = typer.Option(..., "--expires", help="UTC seconds or ISO 8601."),
          points: list[str] = _POINTS, communities: list[str] = _COMMUNITIES,
          label: str = typer.Option("", "--label"), db: str = DB) -> None:
    """An auditor grant over metering points and/or whole communities, until --expires."""
    until = utc_seconds(expires, "--expires")
    made = _run(lambda t: t.add_grant(ident, label, until, points, communities, _now()), db)
    console.print(f"grant {made.id} until {human_time(made.expires)}: points {list(made.metering_points)}, "
                  f"communities {list(made.communities)}")


@app.command("key-create")
def key_create(kind: str = typer.Option(..., "--kind", help="admin, utility, household, auditor"),
               subject: str | None = typer.Option(
                   None, "--subject", help="The utility, household or grant id (none for admin)."),
               label: str = typer.Option("", "--label"),
               expires: str | None = typer.Option(None, "--expires"), db: str = DB) -> None:
    """A new API key; its token is printed once."""
    try:
        parsed = key_kind(kind)
    except PartyError as exc:
        raise typer.BadParameter(str(exc)) from None
    until = None if expires is None else utc_seconds(expires, "--expires")
    key, token = _run(lambda t: t.create_key(parsed, subject, label, until, _now()), db)
    _print_key(key, token)


@app.command("key-rotate")
def key_rotate(key_id: str = typer.Argument(...),
               grace: int | None = typer.Option(
                   None, "--grace", min=0, help="Seconds the old key stays valid; omit: until revoked."),
               db: str = DB) -> None:
    """A new key for the same subject (token printed once)."""
    key, token = _run(lambda t: t.rotate_key(key_id, grace, _now()), db)
    _print_key(key, token)


@app.command("key-revoke")
def key_revoke(key_id: str = typer.Argument(...), db: str = DB) -> None:
    """Revoke a key at once."""
    _print_key(_run(lambda t: t.revoke_key(key_id, _now()), db))


@app.command("list")
def list_all(db: str = DB) -> None:
    """Utilities, communities, households, metering points with their bindings, grants, keys."""

    async def collect(t: PartyTables):
        return (await t.utilities(), await t.communities(), await t.households(),
                await t.visible_points(_ROOT), await t.meter_bindings(), await t.occupancies(),
                await t.grants(), await t.keys())

    utilities, communities, households, points, meters, occupancies, grants, keys = _run(collect, db)
    for u in utilities:
        console.print(f"utility {u.id} {u.name!r}")
    for c in communities:
        console.print(f"community {c.id} {c.name!r} of {c.utility}")
    for h in households:
        console.print(f"household {h.id} {h.name!r} in {h.community}")
    for p in points:
        console.print(f"metering point {p.id} ({p.kind.value}) of {p.utility}"
                      + (f", community {p.community}" if p.community else ""))
    for b in [*meters, *occupancies]:
        _print_binding(b)
    for g in grants:
        console.print(f"grant {g.id} {g.label!r} until {human_time(g.expires)}: points "
                      f"{list(g.metering_points)}, communities {list(g.communities)}")
    for k in keys:
        _print_key(k)
