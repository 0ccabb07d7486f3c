"""What a household sees of its money: balance, a provisional figure, statements, earnings.

Shared by the dashboard (``backend/web/wallet.py``) and the apps' API
(``backend/settlement/household_routes.py``), so a page and an app can never disagree.

The **balance** is the sum of the household's postings (``wallet.py``). The **provisional**
figure is not a posting and never becomes one: for the intervals not settled yet it prices the
household's metered energy as if there were no community (imports at p_g plus the grid network
fee, exports at p_f, VAT on the charges), and for the months not billed yet it adds the monthly
fee and the VAT on the charges posted so far. Settlement replaces it with the real lines, which
are usually better for the household (local energy costs at most p_g, earns at least p_f).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from meterchain.backend.access.tables import PartyTables
from meterchain.backend.settlement.netting import NettingError, local_month_bounds
from meterchain.backend.settlement.netting.rounding import div_half_even
from meterchain.backend.settlement.runner import (
    PointReading,
    PointSeries,
    member_interval,
    month_of,
    terms_at,
)
from meterchain.backend.settlement.tables import SettlementTables, Terms
from meterchain.backend.settlement.wallet import EARNING_LINES, SIGN, Posting, WalletTables
from meterchain.backend.store import SqliteStore

#: How far back the provisional figure looks for unsettled intervals.
PROVISIONAL_WINDOW = 7 * 86_400
DEFAULT_TIMEZONE = "Europe/Berlin"  # the dashboard's default (backend/web/tables.py)
LINE_LABELS = {
    "local_energy_bought": "Local energy bought", "local_energy_sold": "Local energy sold",
    "grid_energy": "Grid energy", "feed_in": "Feed-in to the grid",
    "local_network_fee": "Network fee, local", "grid_network_fee": "Network fee, grid",
    "platform_fee": "Platform fee", "monthly_fee": "Monthly fee", "vat": "VAT",
    "payment": "Payment received", "refund": "Refund paid out",
}


@dataclass(frozen=True)
class Provisional:
    """An estimate, never posted: what the household's open intervals and months may cost."""

    amount: int  # µ€, + credit, − debit, like a posting
    intervals: int  # unsettled intervals priced
    import_wh: int
    export_wh: int
    missing: int  # intervals without both readings yet (not priced)
    open_months: int  # months whose monthly fee and VAT are not posted yet
    since: int | None  # the first unsettled interval priced


@dataclass(frozen=True)
class WalletView:
    household: str
    community: str
    balance: int
    provisional: Provisional
    postings: list[Posting] = field(default_factory=list)


async def household_community(store: SqliteStore, household: str) -> str | None:
    found = await PartyTables(store).household(household)
    return None if found is None else found.community


async def household_timezone(store: SqliteStore, household: str) -> str:
    """The household's time zone (set by the operator; the dashboard's default otherwise)."""
    return await PartyTables(store).household_timezone(household) or DEFAULT_TIMEZONE


async def _prices(tables: SettlementTables, terms: Terms, start: int) -> tuple[int, int] | None:
    prices = []
    for kind, fixed in (("retail", terms.retail_price), ("feed_in", terms.feed_in_price)):
        if fixed is not None:
            prices.append(fixed)
            continue
        row = await tables.price_at(terms.community, kind, start)
        if row is None:
            return None
        prices.append(row.price)
    return prices[0], prices[1]


async def provisional(store: SqliteStore, household: str, now: int) -> Provisional:
    """The provisional figure (module docstring) as of ``now``."""
    tables, parties = SettlementTables(store), PartyTables(store)
    community = await household_community(store, household)
    versions = await tables.terms(community) if community else []
    if not versions or community is None:
        return Provisional(0, 0, 0, 0, 0, 0, None)
    seconds = versions[0].interval_seconds
    state = await tables.state(community)
    upto = state[1] if state else versions[0].valid_from
    start = max(upto, now - now % seconds - PROVISIONAL_WINDOW, versions[0].valid_from)
    end = now - now % seconds
    settled = await tables.in_force(community, start, end) if end > start else {}
    held = [o for o in await parties.occupancies() if o.household == household]
    charge_n = credit_n = imp_total = exp_total = priced = missing = 0
    first: int | None = None
    vat_bp = 0
    for occ in held:
        lo, hi = max(start, occ.valid_from), min(end, occ.valid_to or end)
        if hi <= lo:
            continue
        rows = await tables.point_readings(occ.metering_point, lo, hi)
        series = PointSeries(PointReading.of(r) for r in rows)
        for s in range(lo - (lo % seconds), hi, seconds):
            if s in settled or s < lo:
                continue
            terms = terms_at(versions, s)
            pair = series.around(s, s + seconds)
            prices = await _prices(tables, terms, s) if terms is not None else None
            if terms is None or pair is None or prices is None:
                missing += 1
                continue
            try:
                energy = member_interval(pair[0], pair[1], s, seconds)
            except NettingError:
                missing += 1
                continue
            retail, feed_in = prices
            charge_n += energy.import_wh * (retail + terms.grid_network_fee)
            credit_n += energy.export_wh * feed_in
            imp_total += energy.import_wh
            exp_total += energy.export_wh
            vat_bp = terms.vat_basis_points
            priced += 1
            first = s if first is None else min(first, s)
    charge = div_half_even(charge_n, 1000)
    amount = div_half_even(credit_n, 1000) - charge - div_half_even(charge * vat_bp, 10_000)

    # months not billed yet: monthly fee per metering point held, VAT on the posted charges
    wallet = WalletTables(store)
    billed = await wallet.billed_periods(household)
    open_months = 0
    terms_now = terms_at(versions, end) or versions[0]
    month = month_of(end, terms_now.timezone)
    previous = month_of(month[0] - 1, terms_now.timezone)
    for m_start, m_end in (previous, month):
        if m_start in billed or m_end <= versions[0].valid_from:
            continue
        points = {o.metering_point for o in held
                  if o.valid_from < m_end and (o.valid_to is None or o.valid_to > m_start)}
        if not points:
            continue
        sums = await wallet.sums_by_line("household", household, m_start, m_end)
        charges = -sum(v for line, v in sums.items() if SIGN.get(line, 0) > 0)
        fee = terms_now.monthly_fee * len(points)
        amount -= fee + div_half_even((charges + fee) * terms_now.vat_basis_points, 10_000)
        open_months += 1
    return Provisional(amount, priced, imp_total, exp_total, missing, open_months, first)


async def wallet_view(store: SqliteStore, household: str, now: int, start: int = 0,
                      end: int = 2**62, limit: int = 200) -> WalletView:
    """Balance, provisional figure and the newest ``limit`` postings in [start, end)."""
    wallet = WalletTables(store)
    community = await household_community(store, household) or ""
    postings = await wallet.postings("household", household, start, end, limit, newest=True)
    return WalletView(household, community, await wallet.balance("household", household),
                      await provisional(store, household, now), postings)


def month_bounds(key: str, zone: str) -> tuple[int, int]:
    """``YYYY-MM`` as [start, end) UTC seconds of that local month; ValueError if malformed."""
    year, month = (int(x) for x in key.split("-"))
    if len(key) != 7 or not 1970 <= year <= 9998:
        raise ValueError(f"no month {key}")
    dt.date(year, month, 1)
    return local_month_bounds(year, month, zone)


async def opening_balance(store: SqliteStore, household: str, start: int) -> int:
    return await WalletTables(store).balance_before("household", household, start)


def verify_command(community: str, p: Posting) -> str:
    """The command that re-derives a settlement posting's interval from the signed readings."""
    if p.source not in ("interval", "delta") or p.interval_start is None:
        return ""
    when = dt.datetime.fromtimestamp(p.interval_start, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")
    return (f"meterchain settle --verify --db <db> --community {community} --interval {when} "
            f"--revision {p.revision}")


def statement_csv(community: str, postings: Sequence[Posting], zone: str, opening: int) -> str:
    """Every posting of a statement with its settlement digest and log index, and running
    balance; each settlement line names the ``meterchain settle --verify`` command that checks it."""
    tz = ZoneInfo(zone)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["posting", "when_local", "interval_start_utc", "source", "line", "label",
                     "metering_point", "energy_wh", "amount_micro_eur", "balance_micro_eur",
                     "revision", "settlement_digest", "leaf_index", "reference", "verify"])
    balance = opening
    writer.writerow(["", "", "", "opening", "", "Opening balance", "", "", "", balance, "", "",
                     "", "", ""])
    for p in postings:
        balance += p.amount
        when = p.interval_start if p.interval_start is not None else p.time
        writer.writerow([
            p.id, dt.datetime.fromtimestamp(when, tz).isoformat(), p.interval_start or "",
            p.source, p.line, LINE_LABELS.get(p.line, p.line), p.member or "",
            "" if p.energy_wh is None else p.energy_wh, p.amount, balance,
            "" if p.revision is None else p.revision,
            p.digest.hex() if p.digest and p.source != "bill" else "",
            "" if p.leaf_index is None else p.leaf_index, p.reference or "",
            verify_command(community, p)])
    writer.writerow(["", "", "", "closing", "", "Closing balance", "", "", "", balance, "", "",
                     "", "", ""])
    return out.getvalue()


@dataclass(frozen=True)
class StatementGroup:
    """One row of the printed statement: all postings of one interval revision (or one bill, one
    payment) of one metering point."""

    when: int
    source: str
    member: str | None
    revision: int | None
    digest: bytes | None
    leaf_index: int | None
    lines: list[Posting]

    @property
    def amount(self) -> int:
        return sum(p.amount for p in self.lines)

    def energy(self, *lines: str) -> int:
        return sum(p.energy_wh or 0 for p in self.lines if p.line in lines)


def statement_groups(postings: Sequence[Posting]) -> list[StatementGroup]:
    groups: dict[tuple[object, ...], StatementGroup] = {}
    for p in postings:
        when = p.interval_start if p.interval_start is not None else p.time
        key = (when, p.source, p.member, p.revision, p.id if p.source in ("payment", "refund")
               else None)
        group = groups.get(key)
        if group is None:
            group = groups[key] = StatementGroup(when, p.source, p.member, p.revision, p.digest,
                                                 p.leaf_index, [])
        group.lines.append(p)
    return list(groups.values())


@dataclass(frozen=True)
class Earning:
    key: str  # local day YYYY-MM-DD or month YYYY-MM
    local_wh: int
    local_amount: int
    grid_wh: int
    grid_amount: int

    @property
    def amount(self) -> int:
        return self.local_amount + self.grid_amount


async def earnings(store: SqliteStore, household: str, start: int, end: int, zone: str,
                   by: str) -> list[Earning]:
    """The household's earnings from sold energy per local day (``by="day"``) or month, from its
    postings (re-settlement deltas included)."""
    pattern = "%Y-%m-%d" if by == "day" else "%Y-%m"
    tz = ZoneInfo(zone)
    sums: dict[str, list[int]] = {}
    for s, line, wh, amount in await WalletTables(store).earnings(household, start, end):
        key = dt.datetime.fromtimestamp(s, tz).strftime(pattern)
        row = sums.setdefault(key, [0, 0, 0, 0])
        k = 0 if line == EARNING_LINES[0] else 2
        row[k] += wh
        row[k + 1] += amount
    return [Earning(k, *v) for k, v in sorted(sums.items())]
