"""Settlement runner: turns stored readings into settled intervals, delta lines, settlement leaves
and monthly bills, using the pure netting engine (``backend/settlement/netting``) for every rule.

Members of a community are its metering points. A member's energy in interval [s, e) is the
difference of two readings of the meter bound to it: the latest at or before s (baseline) and the
first at or after e (next); a next reading beyond e spans a gap and is spread evenly
(``netting.energy``). An interval settles once every expected member has both readings
(COMPLETE), or at ``interval end + deadline`` with the absent members as MISSING zero rows
(DEADLINE). A reading that arrives later and changes an interval's input re-settles it as the
next revision: delta lines, and a new settlement leaf naming the digest it supersedes.

Each revision stores the exact input it was settled from (members, energies, quality flags, the
readings' leaf hashes, prices, fees and listings) as canonical CBOR, so the result, its delta lines
and the bills can be rebuilt bit for bit, and ``meterchain settle --verify`` re-derives the input
from the signed readings themselves (``backend/settlement/verify.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import cbor2
import numpy as np
from meterchain.backend.settlement.netting import (
    Bill,
    BillBuilder,
    Community,
    Fees,
    IntervalInput,
    IntervalResult,
    Listing,
    MemberInterval,
    NettingError,
    PriceSchedule,
    Quality,
    Readiness,
    RegisterReading,
    Rule,
    advance,
    delta_lines,
    local_month_bounds,
    readiness,
    resettle,
    settle_interval,
    start_track,
    with_missing,
)
from meterchain.backend.settlement.netting.deltas import IntervalDelta
from meterchain.backend.settlement.netting.model import MONEY_KINDS
from meterchain.backend.settlement.tables import (
    OPEN_END,
    BillRow,
    Exclusion,
    ListingRow,
    NewSettlement,
    SettlementRow,
    SettlementTables,
    StoredReading,
    Terms,
)
from meterchain.backend.store.sqlite import SqliteStore
from meterchain.contract import cbor
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_duration, human_interval, human_time
from meterchain.contract.leaves import SETTLEMENT_LEAF_TYPE
from meterchain.contract.message import parse_message
from meterchain.contract.reading import StatusFlag

log = logging.getLogger(__name__)

INPUT_VERSION = 1
QUALITY_OF_READING = {"measured": Quality.MEASURED, "estimated": Quality.ESTIMATED,
                      "substituted": Quality.SUBSTITUTED}
DEFAULT_RESETTLE_WINDOW = 90 * 86_400


class SettlementError(MeterchainError):
    """A settlement could not be made or checked (missing prices, a digest that does not match)."""

    check = "settlement"


# --------------------------------------------------------------------------- pure derivation


@dataclass(frozen=True, slots=True)
class PointReading:
    """A reading as the netting sees it: cumulative registers of one meter at an interval end."""

    # pylint: disable=duplicate-code  # the netting's view of a tables.StoredReading
    point: str
    device: str
    seq: int
    meter: str
    end: int
    import_wh: int
    export_wh: int
    # pylint: enable=duplicate-code
    leaf_hash: bytes
    quality: Quality
    binding_from: int  # orders a replaced meter's final reading before the new meter's first
    exchanged: bool = False  # flagged METER_EXCHANGED: the first reading of a new meter

    @property
    def serial(self) -> str:
        return f"{self.device}/{self.meter}"

    @classmethod
    def of(cls, row: StoredReading) -> PointReading:
        reading = parse_message(row.message).reading
        return cls(row.point, row.device, row.seq, row.meter, row.end, row.import_wh,
                   row.export_wh, row.leaf_hash,
                   QUALITY_OF_READING.get(reading.quality.value, Quality.ESTIMATED),
                   row.binding_from, bool(reading.status & StatusFlag.METER_EXCHANGED))


def member_interval(baseline: PointReading, following: PointReading, interval_start: int,
                    interval_seconds: int) -> MemberInterval:
    """The member's energy in [start, start + length) from the readings around it.

    Same meter: the register difference, spread evenly if ``following`` lies beyond the interval
    end (SUBSTITUTED). Another meter (an exchange without the old meter's final reading: a new
    binding, or the gateway's METER_EXCHANGED flag on a meter that kept its name): the energy
    between is unknown, so the interval gets zero energy flagged ESTIMATED, never the negative
    difference of the new meter's registers and the old one's (backend/settlement/netting/exchange.py).
    """
    point = baseline.point
    if baseline.serial != following.serial or following.exchanged:
        leaves = tuple(sorted({baseline.leaf_hash, following.leaf_hash}))
        return MemberInterval(point, 0, 0, Quality.ESTIMATED, leaves)

    def register(r: PointReading) -> RegisterReading:
        return RegisterReading(point, r.end, r.serial, r.import_wh, r.export_wh, r.quality,
                               r.leaf_hash)

    track = start_track(register(baseline), interval_seconds)
    _, intervals, starts = advance(track, register(following), interval_seconds)
    return intervals[starts.index(interval_start)]


class PointSeries:
    """One metering point's readings in (end, binding) order, for baseline/next look-ups."""

    def __init__(self, readings: Iterable[PointReading]) -> None:
        self.readings = sorted(readings, key=lambda r: (r.end, r.binding_from))
        self._ends = [r.end for r in self.readings]

    def around(self, start: int, end: int) -> tuple[PointReading, PointReading] | None:
        """(baseline, next) for the interval [start, end), or None if either is missing."""
        b = bisect.bisect_right(self._ends, start) - 1
        n = bisect.bisect_left(self._ends, end)
        if b < 0 or n >= len(self.readings):
            return None
        return self.readings[b], self.readings[n]


def covered(bindings: Sequence[tuple[int, int | None]], start: int, end: int) -> bool:
    """Whether a meter measures the point at the interval's start and up to its end."""
    at_start = any(f <= start < (OPEN_END if t is None else t) for f, t in bindings)
    at_end = any(f < end <= (OPEN_END if t is None else t) for f, t in bindings)
    return at_start and at_end


def derive_interval(
    interval_start: int, interval_seconds: int, expected: Sequence[str],
    series: dict[str, PointSeries],
) -> tuple[list[MemberInterval], list[tuple[str, PointReading, str]]]:
    """Member rows of the present members, and problems (point, reading, why) of unusable ones."""
    rows, problems = [], []
    end = interval_start + interval_seconds
    for point in expected:
        pair = series[point].around(interval_start, end) if point in series else None
        if pair is None:
            continue
        try:
            rows.append(member_interval(pair[0], pair[1], interval_start, interval_seconds))
        except NettingError as exc:
            problems.append((point, pair[1], str(exc)))
    return rows, problems


# ------------------------------------------------------------------ terms, input and leaf


def community_of(terms: Terms, retail: int, feed_in: int) -> Community:
    """The engine's community with the prices in force for one interval."""
    return Community(
        terms.community, PriceSchedule.fixed(retail), PriceSchedule.fixed(feed_in),
        Fees(terms.local_network_fee, terms.grid_network_fee, terms.platform_fee,
             terms.monthly_fee, terms.vat_basis_points),
        Rule(terms.rule), terms.fixed_price, terms.co2_grams_per_kwh, terms.interval_seconds,
        terms.deadline_seconds)


def terms_at(versions: Sequence[Terms], instant: int) -> Terms | None:
    found = None
    for terms in versions:
        if terms.valid_from <= instant:
            found = terms
    return found


def listing_of(row: ListingRow) -> Listing:
    return Listing(row.member, row.buy_limit, row.sell_ask, row.green_source, row.green_only,
                   row.partner_group)


@dataclass(frozen=True)
class SettledInput:
    """Everything one revision was settled from: enough to rebuild its result exactly."""

    terms: Terms
    retail: int
    feed_in: int
    interval: IntervalInput
    listings: dict[str, Listing] | None

    def encode(self) -> bytes:
        iv = self.interval
        listings = None if self.listings is None else [
            [m, x.buy_limit, x.sell_ask, x.green_source, x.green_only, x.partner_group]
            for m, x in sorted(self.listings.items())]
        return cbor2.dumps({
            "v": INPUT_VERSION, "terms": self.terms.as_dict(), "retail": self.retail,
            "feed_in": self.feed_in, "start": iv.interval_start, "members": list(iv.member_ids),
            "import": iv.import_wh.tolist(), "export": iv.export_wh.tolist(),
            "quality": iv.quality.tolist(), "leaves": list(iv.leaf_hashes), "listings": listings,
        }, canonical=True)

    @classmethod
    def decode(cls, data: bytes) -> SettledInput:
        obj = cbor2.loads(data)
        if obj.get("v") != INPUT_VERSION:
            raise SettlementError("unknown settlement input version", version=obj.get("v"))
        interval = IntervalInput.from_columns(obj["start"], obj["members"], obj["import"],
                                              obj["export"], obj["quality"], obj["leaves"])
        listings = None if obj["listings"] is None else {
            m: Listing(m, b, a, gs, go, g) for m, b, a, gs, go, g in obj["listings"]}
        return cls(Terms(**obj["terms"]), obj["retail"], obj["feed_in"], interval, listings)

    def community(self) -> Community:
        return community_of(self.terms, self.retail, self.feed_in)

    def same_energy(self, other: IntervalInput) -> bool:
        a = self.interval
        return (a.member_ids == other.member_ids and a.leaf_hashes == other.leaf_hashes
                and np.array_equal(a.import_wh, other.import_wh)
                and np.array_equal(a.export_wh, other.export_wh)
                and np.array_equal(a.quality, other.quality))


def rebuild(row: SettlementRow) -> tuple[SettledInput, IntervalResult]:
    """Settle a stored revision again from its input; its digest must be the stored one."""
    settled = SettledInput.decode(row.input)
    result = settle_interval(settled.community(), settled.interval, settled.listings,
                             revision=row.revision, supersedes=row.supersedes)
    if result.digest != row.digest:
        raise SettlementError("a stored settlement does not rebuild to its digest",
                              community=row.community, interval_start=row.interval_start,
                              revision=row.revision)
    return settled, result


def settlement_leaf(result: IntervalResult) -> bytes:
    """The typed log leaf of a settled revision (contract/leaves.py parses it)."""
    return cbor.encode({
        "t": SETTLEMENT_LEAF_TYPE,
        "community": result.community_id,
        "interval": [result.interval_start, result.interval_seconds],
        "revision": result.revision,
        "digest": result.digest,
        "supersedes": result.supersedes,
    })


def _energy_money(energy: dict[str, np.ndarray], money: dict[str, np.ndarray], i: int) -> list[int]:
    names = ("import_wh", "export_wh", "bought_local_wh", "bought_grid_wh", "sold_local_wh",
             "sold_grid_wh")
    return [int(energy[n][i]) for n in names] + [int(money[k][i]) for k, _ in MONEY_KINDS]


def new_settlement(result: IntervalResult, settled: SettledInput, reason: str, now: int,
                   delta: IntervalDelta | None, previous: IntervalResult | None = None
                   ) -> NewSettlement:
    """The rows of one revision: member lines for revision 0, delta lines for later ones (with
    ``previous``, the revision it supersedes: the community's rounding lines change by the
    difference)."""
    columns = result.columns
    if delta is None:
        quality = columns.energy["quality"]
        lines: list[tuple[object, ...]] = [
            (m, 0, int(quality[i]), *_energy_money(columns.energy, columns.money, i))
            for i, m in enumerate(result.member_ids)]
    else:
        lines = [(m, 1, None, *_energy_money(delta.energy, delta.money, i))
                 for i, m in enumerate(delta.member_ids)]
    q = settled.interval.quality
    totals = result.totals
    row = SettlementRow(
        result.community_id, result.interval_start, result.revision, result.interval_seconds,
        result.digest, result.supersedes, 0, reason, now, settled.encode(), result.mode,
        result.rule, result.retail_price, result.feed_in_price, len(result.member_ids),
        int((q == Quality.MISSING).sum()), int((q == Quality.SUBSTITUTED).sum()),
        totals.demand_wh, totals.supply_wh, totals.local_wh, totals.grid_import_wh,
        totals.grid_export_wh, totals.self_sufficiency_ppm, totals.self_consumption_ppm,
        totals.co2_avoided_g,
        json.dumps([[t.name, t.price, t.volume_wh, [list(p) for p in t.pairs]]
                    for t in result.tiers]))
    before = {b.kind: b.rounding for b in previous.balances} if previous is not None else {}
    rounding = [(b.kind, b.rounding - before.get(b.kind, 0)) for b in result.balances]
    return NewSettlement(row, settlement_leaf(result), lines, result.seller_mix(), rounding)


# --------------------------------------------------------------------------------- bills


def month_of(instant: int, zone: str) -> tuple[int, int]:
    """The local calendar month [start, end) in UTC seconds that contains ``instant``."""
    local = dt.datetime.fromtimestamp(instant, ZoneInfo(zone))
    return local_month_bounds(local.year, local.month, zone)


def bill_community(terms: Terms) -> Community:
    """Bills use a community's fees and VAT; prices come from each interval's own result."""
    return community_of(terms, 0, 0)


def bills_from(rows: Sequence[SettlementRow], terms: Terms, period_start: int, period_end: int
               ) -> tuple[dict[str, Bill], bytes]:
    """Every member's bill of a period from its settled revisions (deltas applied in order),
    and the basis: SHA-256 over the digests in force, which changes with any re-settlement."""
    builder = BillBuilder(bill_community(terms), period_start, period_end)
    previous: dict[int, IntervalResult] = {}
    for row in rows:
        _, result = rebuild(row)
        if row.revision == 0:
            builder.add(result)
        else:
            builder.add_delta(delta_lines(previous[row.interval_start], result))
        previous[row.interval_start] = result
    basis = hashlib.sha256(b"".join(previous[s].digest for s in sorted(previous))).digest()
    return builder.bills(), basis


def bill_row(community: str, bill: Bill, version: int, basis: bytes, now: int) -> BillRow:
    return BillRow(
        community, bill.member_id, bill.period_start, version, bill.period_end, now, basis,
        bill.total, bill.baseline_total, bill.savings, bill.co2_avoided_g, dict(bill.energy),
        [{"kind": line.kind, "amount": line.amount, "energy_wh": line.energy_wh}
         for line in bill.lines])


async def issue_bills(tables: SettlementTables, community: str, period_start: int,
                      period_end: int, now: int) -> list[BillRow]:
    """Build the period's bills; store a new version of each bill whose basis changed."""
    versions = await tables.terms(community)
    terms = terms_at(versions, period_start) or versions[0]
    basis = await tables.bill_basis(community, period_start, period_end)
    if basis is None or await tables.has_bill_basis(community, period_start, basis):
        return []  # nothing settled, or the bills of exactly these revisions are issued
    rows = await tables.revisions(community, period_start, period_end)
    bills, rebuilt = bills_from(rows, terms, period_start, period_end)
    if rebuilt != basis:
        raise SettlementError("settlements changed while the bills were built",
                              community=community, period_start=period_start)
    issued = []
    for member, bill in bills.items():
        latest = await tables.latest_bill(community, member, period_start)
        issued.append(bill_row(community, bill, 0 if latest is None else latest.version + 1,
                               basis, now))
    await tables.add_bills(issued)
    return issued


# -------------------------------------------------------------------------------- runner


@dataclass
class PassReport:
    """What one pass did for one community."""

    community: str
    settled: list[tuple[int, int, str]] = field(default_factory=list)  # (start, revision, reason)
    waiting: int = 0
    problems: list[str] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    bills: int = 0


class SettlementRunner:
    """Settles every community with terms, once per ``every`` seconds, on its own connection."""

    def __init__(self, store: SqliteStore, *, clock: Callable[[], float] = time.time,
                 every: float = 5.0, resettle_window: int = DEFAULT_RESETTLE_WINDOW,
                 on_commit: Callable[[int], None] = lambda count: None, max_intervals: int = 2000) -> None:
        self.store = store
        self.tables = SettlementTables(store)
        self.clock = clock
        self.every = every
        self.resettle_window = resettle_window
        self.on_commit = on_commit
        self.max_intervals = max_intervals  # per community and pass: a long backlog is worked off in steps
        self._parsed: dict[int, PointReading] = {}

    async def run(self) -> None:
        """Settle forever; a failing community is logged and retried next pass."""
        while True:
            try:
                await self.run_once()
            except MeterchainError as exc:
                log.warning("settlement pass failed: %s", exc.diagnostics())
            except sqlite3.OperationalError as exc:  # a busy database: the next pass retries
                log.warning("settlement pass failed: %s", exc)
            await asyncio.sleep(self.every)

    async def run_once(self) -> list[PassReport]:
        reports = []
        for community in await self.tables.netting_communities():
            reports.append(await self.settle_community(community, int(self.clock())))
        return reports

    def _reading(self, row: StoredReading) -> PointReading:
        found = self._parsed.get(row.leaf_id)
        if found is None or found.point != row.point or found.binding_from != row.binding_from:
            if len(self._parsed) > 200_000:
                self._parsed.clear()
            found = self._parsed[row.leaf_id] = PointReading.of(row)
        return found

    async def settle_community(self, community: str, now: int) -> PassReport:
        tables = self.tables
        report = PassReport(community)
        versions = await tables.terms(community)
        if not versions:
            return report
        seconds = versions[0].interval_seconds
        cursor, upto = await tables.state(community) or (0, versions[0].valid_from)
        newest = await tables.newest_reading_leaf()
        bindings: dict[str, list[tuple[int, int | None]]] = {}
        for point, _, _, valid_from, valid_to in await tables.bindings(community):
            bindings.setdefault(point, []).append((valid_from, valid_to))

        # Which settled intervals new readings may change: from the reading before the first new
        # one of a point to the reading after its last (a gap's readings span several intervals).
        dirty: list[tuple[int, int]] = []
        for point, device, seq, end in await tables.new_readings(community, cursor, newest):
            if end % seconds:
                report.exclusions.append(Exclusion(
                    community, point, device, seq, "off-grid",
                    f"reading ends at {human_time(end)}, not on the community's {human_duration(seconds)} grid", now))
        for point, first, last in await tables.new_reading_ranges(community, cursor, newest):
            around = await tables.point_readings(point, first, last)
            before = [r.end for r in around if r.end < first]
            after = [r.end for r in around if r.end > last]
            lo = before[0] if before else first - seconds
            hi = after[-1] if after else last
            dirty.append((lo - lo % seconds, hi))
        window_floor = now - self.resettle_window
        last_end = now - now % seconds
        candidates = set(range(upto, min(last_end, upto + self.max_intervals * seconds), seconds))
        for lo, hi in dirty:
            for start in range(lo, hi, seconds):
                if start >= versions[0].valid_from and start + seconds <= last_end:
                    candidates.add(start)
        if not candidates:
            if newest != cursor or report.exclusions:
                await tables.commit(community, [], report.exclusions, newest, upto)
            return report
        first_start, last_start = min(candidates), max(candidates)
        in_force = await tables.in_force(community, first_start, last_start + 1)

        series: dict[str, PointSeries] = {}
        for point in bindings:
            rows = await tables.point_readings(point, first_start, last_start + seconds)
            series[point] = PointSeries(self._reading(r) for r in rows)

        settled: list[NewSettlement] = []
        for start in sorted(candidates):
            previous = in_force.get(start)
            if previous is not None and start < window_floor:
                report.problems.append(f"interval {human_interval(start, start + seconds)} is older than the "
                                       "re-settlement window;"
                                       " a late reading is not applied to it")
                continue
            try:
                item = await self._settle_one(community, versions, bindings, series, start,
                                              seconds, previous, now, report)
            except MeterchainError as exc:
                report.problems.append(f"interval {human_interval(start, start + seconds)}: {exc.diagnostics()}")
                continue
            if item is not None:
                settled.append(item)
                in_force[start] = item.row
                report.settled.append((start, item.row.revision, item.row.reason))
        while upto < last_end and (upto in in_force or not any(
                covered(b, upto, upto + seconds) for b in bindings.values())):
            upto += seconds
        await tables.commit(community, settled, report.exclusions, newest, upto)
        if settled:
            self.on_commit(len(settled))  # new settlement leaves: the sealer may seal early
        periods = set()
        for start, _, _ in report.settled:
            periods.add(month_of(start, (terms_at(versions, start) or versions[0]).timezone))
        if upto > versions[0].valid_from:
            periods.add(month_of(upto - seconds, (terms_at(versions, upto - seconds)
                                                  or versions[0]).timezone))
        for period_start, period_end in sorted(periods):
            if period_end <= upto:
                report.bills += len(await issue_bills(tables, community, period_start,
                                                      period_end, now))
        return report

    async def _settle_one(
        self, community: str, versions: Sequence[Terms],
        bindings: dict[str, list[tuple[int, int | None]]], series: dict[str, PointSeries],
        start: int, seconds: int, previous: SettlementRow | None, now: int, report: PassReport,
    ) -> NewSettlement | None:
        terms = terms_at(versions, start)
        if terms is None:
            return None
        expected = sorted(p for p, b in bindings.items() if covered(b, start, start + seconds))
        if not expected:
            return None
        rows, problems = derive_interval(start, seconds, expected, series)
        for point, reading, why in problems:
            report.exclusions.append(Exclusion(community, point, reading.device, reading.seq,
                                               "register", why, now))
        present = [r.member_id for r in rows]
        if previous is None:
            state = readiness(expected, present, interval_end=start + seconds,
                              deadline_seconds=terms.deadline_seconds, now=now)
            if state is Readiness.WAIT:
                report.waiting += 1
                return None
            interval = with_missing(start, rows, expected)
            settled = await self._input(community, terms, start, interval)
            result = settle_interval(settled.community(), interval, settled.listings)
            return new_settlement(result, settled, state.value, now, None)
        old_input, old_result = rebuild(previous)
        interval = with_missing(start, rows, expected)
        if old_input.same_energy(interval):
            return None
        settled = SettledInput(old_input.terms, old_input.retail, old_input.feed_in, interval,
                               old_input.listings)
        result, delta = resettle(old_result, settled.community(), interval, settled.listings)
        return new_settlement(result, settled, "late-reading", now, delta, old_result)

    async def _input(self, community: str, terms: Terms, start: int,
                     interval: IntervalInput) -> SettledInput:
        prices = []
        for kind, fixed in (("retail", terms.retail_price), ("feed_in", terms.feed_in_price)):
            if fixed is not None:
                prices.append(fixed)
                continue
            row = await self.tables.price_at(community, kind, start)
            if row is None:
                raise SettlementError(f"no {kind} price for the interval starting {start}",
                                      community=community, interval_start=start,
                                      hint="import the day's prices (meterchain settle prices)")
            prices.append(row.price)
        listings = None
        if terms.market == "auction":
            listings = {row.member: listing_of(row)
                        for row in await self.tables.listings(community, at=start)}
        return SettledInput(terms, prices[0], prices[1], interval, listings)


# ------------------------------------------------------------------ operations (API and CLI)


def check_terms(terms: Terms) -> Terms:
    """Refuse terms the engine would refuse later (bounds, rule, grid), with the field named."""
    if terms.market not in ("prorata", "auction"):
        raise SettlementError("market must be prorata or auction", market=terms.market)
    try:
        ZoneInfo(terms.timezone)
    except (KeyError, ValueError) as exc:
        raise SettlementError("unknown time zone", timezone=terms.timezone) from exc
    if 86_400 % terms.interval_seconds:
        raise SettlementError("the interval must divide a day", interval=terms.interval_seconds)
    retail = 0 if terms.retail_price is None else terms.retail_price
    feed_in = 0 if terms.feed_in_price is None else terms.feed_in_price
    community_of(terms, retail, min(retail, feed_in)).prices_at(terms.valid_from)
    if terms.retail_price is not None and terms.feed_in_price is not None:
        community_of(terms, retail, feed_in).prices_at(terms.valid_from)
    return terms


def schedule_rows(schedule: PriceSchedule) -> list[tuple[int, int, int]]:
    """An imported price schedule as stored rows (start, end, price)."""
    if schedule.end is None:
        raise SettlementError("an imported price series needs an end")
    starts = [s for s, _ in schedule.steps] + [schedule.end]
    return [(s, starts[i + 1], p) for i, (s, p) in enumerate(schedule.steps)]
