"""``meterchain settle``: verify a settled interval against the log, run a settlement pass, issue
and show bills, and manage a community's terms, dynamic prices and listings (straight into the
database; the API offers the same operations)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import typer
from meterchain.backend.access.cli import utc_seconds
from meterchain.backend.settlement.netting import Listing, local_month_bounds, parse_price_csv
from meterchain.backend.settlement.runner import (
    SettlementRunner,
    check_terms,
    issue_bills,
    schedule_rows,
    terms_at,
)
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.settlement.verify import verify_settlement
from meterchain.backend.settlement.wallet import Posting, WalletTables
from meterchain.backend.store import SqliteStore, using_sqlite
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_time
from meterchain.contract.note import NoteVerifier
from rich.console import Console

T = TypeVar("T")
app = typer.Typer(help="Netting and settlement: verify, run, bills, terms, prices, listings.",
                  invoke_without_command=True)
console = Console(highlight=False, markup=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DB = typer.Option("meterchain.db", "--db", help="The backend's SQLite database.")
COMMUNITY = typer.Option(..., "--community", help="Community id.")
CSV_FILE = typer.Option(..., "--csv", help="Rows start,price (UTC s or ISO 8601).")


def _run(db: str, action: Callable[[SqliteStore], Awaitable[T]]) -> T:
    try:
        return asyncio.run(using_sqlite(db, action))
    except MeterchainError as exc:
        err.print(f"error {exc.diagnostics()}")
        raise typer.Exit(1) from None


def _log_key(value: str | None) -> NoteVerifier | None:
    if value is None:
        return None
    path = Path(value)
    text = path.read_text().strip() if path.exists() else value
    try:
        return NoteVerifier.parse(text)
    except MeterchainError as exc:
        raise typer.BadParameter(f"--log-key: {exc}") from None


def _euros(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    return f"{sign}{abs(micro) // 1_000_000}.{abs(micro) % 1_000_000 // 10_000:02d} €"


@app.callback()
def settle(
    ctx: typer.Context,
    verify: bool = typer.Option(False, "--verify", help="Re-run an interval from its signed "
                                "readings and compare the digest with its settlement leaf."),
    db: str = DB,
    community: str | None = typer.Option(None, "--community"),
    interval: str | None = typer.Option(None, "--interval", help="Interval start: UTC seconds "
                                        "or ISO 8601 with offset."),
    revision: int | None = typer.Option(None, "--revision", help="Default: the one in force."),
    log_key: str | None = typer.Option(None, "--log-key", help="The log's verifier key (text or "
                                       "file): also check every inclusion under a checkpoint."),
) -> None:
    """Netting and settlement. `meterchain settle --verify --db D --community C --interval T`
    exits 0 when the re-settled digest equals the logged one."""
    if ctx.invoked_subcommand is not None:
        return
    if not verify:
        console.print(ctx.get_help())
        raise typer.Exit(0)
    if community is None or interval is None:
        raise typer.BadParameter("--verify needs --community and --interval")
    start = utc_seconds(interval, "--interval")
    key = _log_key(log_key)
    report = _run(db, lambda s: verify_settlement(s, community, start, revision, key))
    for check in report.passed:
        console.print(f"ok    {check}")
    for problem in report.problems:
        console.print(f"FAIL  {problem}")
    if report.ok:
        console.print(f"settlement of {community} for {human_time(start)} revision {report.revision}: digest "
                      f"{(report.digest or b'').hex()} re-computed from {report.readings} signed "
                      "readings equals the logged digest")
        return
    if key is None:
        console.print("(without --log-key, inclusion in the log was not checked)")
    raise typer.Exit(1)


@app.command()
def run(db: str = DB, now: str | None = typer.Option(None, "--now", help="Settle as of this "
                                                      "time (default: the clock).")) -> None:
    """One settlement pass over every community with terms (the service does this itself)."""
    instant = int(time.time()) if now is None else utc_seconds(now, "--now")

    async def action(store: SqliteStore) -> list[str]:
        runner = SettlementRunner(store, clock=lambda: instant)
        out = []
        for report in await runner.run_once():
            revised = sum(1 for _, rev, _ in report.settled if rev)
            out.append(f"{report.community}: {len(report.settled) - revised} settled, {revised} "
                       f"re-settled, {report.waiting} waiting, {report.bills} bills issued, "
                       f"{len(report.exclusions)} readings excluded")
            out += [f"  problem: {p}" for p in report.problems[:20]]
        return out

    for line in _run(db, action):
        console.print(line)


@app.command()
def bills(
    db: str = DB, community: str = COMMUNITY,
    month: str = typer.Option(..., "--month", help="YYYY-MM in the community's time zone."),
    member: str | None = typer.Option(None, "--member"),
    issue: bool = typer.Option(True, "--issue/--no-issue", help="Issue bills for what is settled."),
) -> None:
    """Issue (if settlements changed) and show a month's bills."""
    try:
        year, number = (int(x) for x in month.split("-"))
        dt.date(year, number, 1)
    except ValueError:
        raise typer.BadParameter("--month must be YYYY-MM") from None

    async def action(store: SqliteStore) -> list[str]:
        tables = SettlementTables(store)
        versions = await tables.terms(community)
        if not versions:
            raise MeterchainError(f"community {community} has no netting terms")
        zone = versions[0].timezone
        start, end = local_month_bounds(year, number, zone)
        zone = (terms_at(versions, start) or versions[0]).timezone
        start, end = local_month_bounds(year, number, zone)
        if issue:
            await issue_bills(tables, community, start, end, int(time.time()))
        out = []
        for bill in await tables.bills(community, member, start):
            out.append(f"{bill.member} {month} version {bill.version}: total "
                       f"{_euros(bill.total)} (without the community {_euros(bill.baseline_total)},"
                       f" saved {_euros(bill.savings)}), CO2 avoided {bill.co2_avoided_g} g")
            for line in bill.lines:
                out.append(f"    {line['kind']:<22} {_euros(int(line['amount'])):>14}"  # type: ignore[call-overload]
                           + ("" if line["energy_wh"] is None else f"  {line['energy_wh']} Wh"))
        return out or [f"no bills of {community} for {month}"]

    for line in _run(db, action):
        console.print(line)


@app.command()
def terms(
    db: str = DB, community: str = COMMUNITY,
    valid_from: str = typer.Option(..., "--from", help="First interval start they apply to."),
    interval: int = typer.Option(900, "--interval-seconds"),
    deadline: int = typer.Option(86_400, "--deadline-seconds", help="Settle with what is in "
                                 "this long after an interval's end."),
    timezone: str = typer.Option("Europe/Berlin", "--timezone", help="Of the bill months."),
    market: str = typer.Option("prorata", "--market", help="prorata or auction (listings)."),
    rule: str = typer.Option("mid_market", "--rule", help="mid_market, sdr or fixed."),
    fixed_price: int | None = typer.Option(None, "--fixed-price", help="µ€/kWh (rule fixed)."),
    retail: int | None = typer.Option(None, "--retail", help="p_g µ€/kWh; omit: imported prices."),
    feed_in: int | None = typer.Option(None, "--feed-in", help="p_f µ€/kWh; omit: imported."),
    local_fee: int = typer.Option(0, "--local-network-fee", help="µ€/kWh on local energy."),
    grid_fee: int = typer.Option(0, "--grid-network-fee", help="µ€/kWh on grid energy."),
    platform_fee: int = typer.Option(0, "--platform-fee", help="µ€/kWh on local energy."),
    monthly_fee: int = typer.Option(0, "--monthly-fee", help="µ€ per member and month."),
    vat: int = typer.Option(0, "--vat-basis-points", help="1900 = 19 %."),
    co2: int = typer.Option(0, "--co2", help="g CO2 per grid kWh avoided."),
) -> None:
    """Set a community's netting terms from a time on (never for settled intervals)."""
    new = Terms(community, utc_seconds(valid_from, "--from"), interval, deadline, timezone,
                market, rule, fixed_price, retail, feed_in, local_fee, grid_fee, platform_fee,
                monthly_fee, vat, co2)

    async def action(store: SqliteStore) -> Terms:
        return await SettlementTables(store).set_terms(check_terms(new), int(time.time()))

    saved = _run(db, action)
    console.print(f"terms of {community} from {human_time(saved.valid_from)}: "
                  f"{ {k: v for k, v in saved.as_dict().items() if k != 'valid_from'} }")


@app.command()
def prices(
    db: str = DB, community: str = COMMUNITY,
    kind: str = typer.Option(..., "--kind", help="retail or feed_in"),
    csv_file: Path = CSV_FILE,
    unit: str = typer.Option("EUR/MWh", "--unit", help="EUR/MWh, EUR/kWh, ct/kWh or uEUR/kWh."),
    resolution: int = typer.Option(3600, "--resolution-seconds"),
) -> None:
    """Import time-varying prices (an hourly tariff, day-ahead prices) for a community."""
    try:
        text = csv_file.read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {csv_file}: {exc.strerror}") from None

    async def action(store: SqliteStore) -> int:
        tables = SettlementTables(store)
        versions = await tables.terms(community)
        seconds = versions[0].interval_seconds if versions else 900
        schedule = parse_price_csv(text, unit=unit, resolution_seconds=resolution,
                                   interval_seconds=seconds)
        return await tables.add_prices(community, kind, schedule_rows(schedule), int(time.time()))

    console.print(f"{_run(db, action)} {kind} price rows imported for {community}")


@app.command()
def listing(
    db: str = DB, community: str = COMMUNITY,
    member: str = typer.Option(..., "--member", help="The member's metering point."),
    valid_from: str = typer.Option(..., "--from"),
    buy_limit: int | None = typer.Option(None, "--buy-limit", help="µ€/kWh at most."),
    sell_ask: int | None = typer.Option(None, "--sell-ask", help="µ€/kWh at least."),
    green_source: bool = typer.Option(False, "--green-source"),
    green_only: bool = typer.Option(False, "--green-only"),
    partner_group: str | None = typer.Option(None, "--partner-group"),
) -> None:
    """Post a member's standing order (it ends the member's open one)."""
    start = utc_seconds(valid_from, "--from")

    async def action(store: SqliteStore) -> object:
        Listing(member, buy_limit, sell_ask, green_source, green_only, partner_group)  # validate
        return await SettlementTables(store).post_listing(
            community, member, start, buy_limit, sell_ask, green_source, green_only,
            partner_group, int(time.time()))

    console.print(f"listing {_run(db, action)}")


@app.command()
def intervals(
    db: str = DB, community: str = COMMUNITY,
    start: str = typer.Option(..., "--from"), end: str = typer.Option(..., "--to"),
) -> None:
    """Settled intervals in force: totals, revision, reason, digest."""
    lo, hi = utc_seconds(start, "--from"), utc_seconds(end, "--to")

    async def action(store: SqliteStore) -> list[str]:
        rows = await SettlementTables(store).in_force(community, lo, hi)
        return [f"{s} rev {r.revision} {r.reason:<12} D {r.demand_wh} Wh S {r.supply_wh} Wh "
                f"L {r.local_wh} Wh missing {r.missing} substituted {r.substituted} "
                f"{r.digest.hex()[:16]}…" for s, r in sorted(rows.items())]

    for line in _run(db, action) or ["nothing settled in that range"]:
        console.print(line)


@app.command()
def payment(
    db: str = DB,
    household: str = typer.Option(..., "--household"),
    amount: int = typer.Option(..., "--amount", help="µ€, positive (10 € = 10000000)."),
    kind: str = typer.Option("payment", "--kind", help="payment (the household paid in, a "
                             "credit) or refund (paid out to it, a debit)."),
    reference: str | None = typer.Option(None, "--reference", help="e.g. the bank reference."),
) -> None:
    """Record a household's payment or refund as a posting in its wallet."""
    async def action(store: SqliteStore) -> tuple[Posting, int]:
        wallet = WalletTables(store)
        posting = await wallet.record_payment(household, kind, amount, reference, "cli",
                                              int(time.time()))
        return posting, await wallet.balance("household", household)

    posting, balance = _run(db, action)
    console.print(f"posted {kind} {_euros(posting.amount)} as posting {posting.id}; "
                  f"balance of {household} now {_euros(balance)}")


@app.command()
def wallet(
    db: str = DB,
    household: str = typer.Option(..., "--household"),
    last: int = typer.Option(20, "--last", help="How many of the newest postings to show."),
) -> None:
    """A household's balance (the sum of its postings) and its newest postings."""
    async def action(store: SqliteStore) -> list[str]:
        wallet = WalletTables(store)
        postings = await wallet.postings("household", household)
        out = [f"{household}: balance {_euros(sum(p.amount for p in postings))} from "
               f"{len(postings)} postings"]
        for p in postings[-last:]:
            when = p.interval_start if p.interval_start is not None else p.time
            digest = f" {p.digest.hex()[:16]}…" if p.digest and p.source != "bill" else ""
            out.append(f"  {dt.datetime.fromtimestamp(when, dt.UTC):%Y-%m-%d %H:%MZ} "
                       f"{p.source:<8} {p.line:<20} {_euros(p.amount):>12}{digest}")
        return out

    for line in _run(db, action):
        console.print(line)
