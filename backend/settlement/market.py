"""A community's market as its households see it: aggregates only, never a member's energy.

What a household may see of the others (docs/privacy.md "The market page"): per settled interval
the clearing price, volume and the number of matched buyers and sellers of each tier, how many
members imported and exported, and the community's price band [p_f, p_g]; per day the
volume-weighted mean local price and the local volume; the grid price curve of dynamic tariffs.
Member ids never leave this module: counts and sums only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
from meterchain.backend.settlement.runner import SettledInput, terms_at
from meterchain.backend.settlement.tables import SettlementRow, SettlementTables, Terms
from meterchain.backend.store.sqlite import SqliteStore
from meterchain.backend.store.tables import SqliteTables

RECENT = 12  # settled intervals listed
HISTORY_DAYS = 30


@dataclass(frozen=True)
class TierView:
    name: str  # prorata…, partners, green, rest
    price: int  # µ€/kWh
    volume_wh: int
    buyers: int  # matched buyers (auction pairs); pro-rata: members that bought locally
    sellers: int


@dataclass(frozen=True)
class IntervalView:
    start: int
    revision: int
    mode: str
    retail: int
    feed_in: int
    importing: int  # members with import > 0
    exporting: int  # members with export > 0
    local_wh: int
    tiers: list[TierView]
    digest: str


@dataclass(frozen=True)
class DayView:
    day: str  # local YYYY-MM-DD
    start: int
    local_wh: int
    mean_price: int | None  # volume-weighted over tiers, µ€/kWh; None without local trades
    low: int | None  # lowest and highest tier price of the day
    high: int | None
    retail: int  # mean p_g and p_f of the day's intervals
    feed_in: int
    intervals: int


@dataclass(frozen=True)
class MarketView:
    community: str
    terms: Terms | None
    band: tuple[int, int] | None  # (p_f, p_g) in force now
    dynamic: bool
    recent: list[IntervalView]
    history: list[DayView]
    curve: list[tuple[str, int, int, int]]  # (kind, start, end, price) today and tomorrow


def _pair_counts(pairs: list[list[object]]) -> tuple[int, int]:
    return len({p[0] for p in pairs}), len({p[1] for p in pairs})


def interval_view(row: SettlementRow) -> IntervalView:
    """One settled interval as counts and sums (the stored input decoded for the counts)."""
    settled = SettledInput.decode(row.input)
    iv = settled.interval
    tiers = []
    for name, price, volume, pairs in json.loads(row.tiers):
        if not volume:
            continue  # nothing traded in this tier: the page says "no local trade"
        buyers, sellers = _pair_counts(pairs)
        if not pairs and volume:  # pro-rata: the local energy is pooled, not paired
            buyers = int(np.count_nonzero(iv.import_wh)) if iv.supply_wh else 0
            sellers = int(np.count_nonzero(iv.export_wh)) if iv.demand_wh else 0
        tiers.append(TierView(str(name), int(price), int(volume), buyers, sellers))
    return IntervalView(row.interval_start, row.revision, row.mode, row.retail_price,
                        row.feed_in_price, int(np.count_nonzero(iv.import_wh)),
                        int(np.count_nonzero(iv.export_wh)), row.local_wh, tiers,
                        row.digest.hex())


def day_views(rows: Sequence[SettlementRow | _TierRow], zone: str) -> list[DayView]:
    tz = ZoneInfo(zone)
    days: dict[str, list[int]] = {}
    for row in rows:
        local = dt.datetime.fromtimestamp(row.interval_start, tz)
        key = local.strftime("%Y-%m-%d")
        # [start, local Wh, Σ price×Wh, low, high, Σ retail, Σ feed-in, intervals]
        d = days.setdefault(key, [row.interval_start, 0, 0, 2**62, -(2**62), 0, 0, 0])
        for _, price, volume, _ in json.loads(row.tiers):
            if volume:
                d[1] += volume
                d[2] += price * volume
                d[3], d[4] = min(d[3], price), max(d[4], price)
        d[5] += row.retail_price
        d[6] += row.feed_in_price
        d[7] += 1
    out = []
    for key, d in sorted(days.items()):
        traded = d[1] > 0
        out.append(DayView(key, d[0], d[1], (d[2] + d[1] // 2) // d[1] if traded else None,
                           d[3] if traded else None, d[4] if traded else None,
                           d[5] // d[7], d[6] // d[7], d[7]))
    return out


async def band_at(tables: SettlementTables, terms: Terms, instant: int) -> tuple[int, int] | None:
    """(p_f, p_g) in force at ``instant``: the terms' prices or the imported price rows."""
    prices = []
    for kind, fixed in (("feed_in", terms.feed_in_price), ("retail", terms.retail_price)):
        if fixed is None:
            row = await tables.price_at(terms.community, kind, instant)
            if row is None:
                return None
            fixed = row.price
        prices.append(fixed)
    return prices[0], prices[1]


async def band_now(store: SqliteStore, community: str, now: int) -> tuple[int, int] | None:
    """(p_f, p_g) in force at ``now`` for the community, None without terms or prices."""
    tables = SettlementTables(store)
    versions = await tables.terms(community)
    terms = terms_at(versions, now) or (versions[-1] if versions else None)
    return None if terms is None else await band_at(tables, terms, now)


async def market_view(store: SqliteStore, community: str, now: int, zone: str,
                      recent: int = RECENT, days: int = HISTORY_DAYS) -> MarketView:
    """The market page's data for ``community`` as of ``now`` (times shown in ``zone``)."""
    tables = SettlementTables(store)
    versions = await tables.terms(community)
    terms = terms_at(versions, now) or (versions[-1] if versions else None)
    if terms is None:
        return MarketView(community, None, None, False, [], [], [])
    tz = ZoneInfo(zone)
    today = dt.datetime.fromtimestamp(now, tz).date()
    first = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), tz)
    rows = await MarketTables(store).tier_rows(community, int(first.timestamp()), now + 1)
    dynamic = terms.retail_price is None or terms.feed_in_price is None
    curve: list[tuple[str, int, int, int]] = []
    if dynamic:
        lo = int(dt.datetime.combine(today, dt.time(), tz).timestamp())
        hi = int(dt.datetime.combine(today + dt.timedelta(days=2), dt.time(), tz).timestamp())
        curve = [(p.kind, max(p.start, lo), min(p.end, hi), p.price)
                 for p in await tables.prices(community, lo, hi)]
    latest: list[SettlementRow] = []  # only these few decode their stored inputs (counts)
    if recent and rows:
        latest = list((await tables.in_force(community, rows[-recent:][0].interval_start,
                                             now + 1)).values())
    return MarketView(community, terms, await band_at(tables, terms, now), dynamic,
                      [interval_view(r) for r in reversed(latest[-recent:])],
                      day_views(rows, zone), curve)


@dataclass(frozen=True)
class _TierRow:
    """What the day views read of a settled revision (not its input, which can be large)."""

    interval_start: int
    retail_price: int
    feed_in_price: int
    tiers: str


class MarketTables(SqliteTables):
    """The market's reads that must stay light for large communities."""

    async def tier_rows(self, community: str, start: int, end: int) -> list[_TierRow]:
        """Prices and tiers of each interval in [start, end) at its newest revision, without
        the stored inputs (megabytes per interval in a large community)."""
        return [_TierRow(int(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in await self._rows(
            "SELECT s.interval_start, s.retail_price, s.feed_in_price, s.tiers FROM settlements s "
            "WHERE s.community = ? AND s.interval_start >= ? AND s.interval_start < ? AND "
            "s.revision = (SELECT max(revision) FROM settlements x WHERE x.community = "
            "s.community AND x.interval_start = s.interval_start) ORDER BY s.interval_start",
            (community, start, end))]
