"""A household's trading conditions: its standing listing per metering point, when a change takes
effect, and a preview of what it would have done last week.

Listings are versioned by ``valid_from`` (``netting_listings``); a change takes effect from the
first quarter hour that starts after now and after every settled interval, so a settled interval
never changes (its stored input keeps the listings it was settled with). A change not yet in
force is replaced by the next one (it has governed nothing yet).

The preview re-runs the deterministic netting (``settle_interval``) on the stored inputs of the
last seven days with the member's listing replaced, in memory: nothing stored changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from meterchain.backend.access.model import InvalidParty, UnknownParty
from meterchain.backend.settlement.netting import Listing, settle_interval
from meterchain.backend.settlement.netting.model import MAX_PRICE
from meterchain.backend.settlement.netting.rounding import div_half_even
from meterchain.backend.settlement.runner import SettledInput, terms_at
from meterchain.backend.settlement.tables import ListingRow, SettlementRow, SettlementTables
from meterchain.backend.store.sqlite import SqliteStore
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.errors import MeterchainError

PREVIEW_SECONDS = 7 * 86_400


class ConditionsError(MeterchainError):
    """Conditions a household entered that cannot be used (a price that is not a number)."""

    check = "invalid"


@dataclass(frozen=True)
class Conditions:
    """What a household sets for one metering point (prices in µ€/kWh; None: the default)."""

    sell_ask: int | None = None
    buy_limit: int | None = None
    green_source: bool = False
    green_only: bool = False
    partner_group: str | None = None

    def listing(self, member: str) -> Listing:
        """The engine's listing (validates bounds and the group id)."""
        return Listing(member, self.buy_limit, self.sell_ask, self.green_source, self.green_only,
                       self.partner_group)

    @classmethod
    def of(cls, row: ListingRow | None) -> Conditions:
        if row is None:
            return cls()
        return cls(row.sell_ask, row.buy_limit, row.green_source, row.green_only,
                   row.partner_group)


def parse_price(text: str, what: str) -> int | None:
    """'0.18' (€/kWh, a dot or a comma) as µ€/kWh; blank is None (the default)."""
    text = text.strip().replace(",", ".").removesuffix("€/kWh").strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ConditionsError(f"{what} must be a price in €/kWh such as 0.18", value=text[:20]
                              ) from None
    if not value.is_finite() or abs(value) > Decimal(MAX_PRICE) / 1_000_000:
        raise ConditionsError(f"{what} must lie between −10 and 10 €/kWh", value=text[:20])
    return int((value * 1_000_000).to_integral_value())


@dataclass(frozen=True)
class ConditionsState:
    community: str
    member: str
    market: str  # prorata or auction (listings only act in auctions)
    in_force: Conditions
    pending: ListingRow | None  # a change saved but not in force yet
    effective_from: int  # the first interval a change saved now would govern
    interval_seconds: int


class ConditionsTables(SqliteTables):
    """Listing versions of a household's metering points."""

    async def settled_until(self, community: str) -> int | None:
        """The end of the last settled interval of the community, if any."""
        row = await self._one("SELECT max(interval_start + interval_seconds) FROM settlements "
                              "WHERE community = ?", (community,))
        return None if row is None or row[0] is None else int(row[0])

    async def replace_pending(self, community: str, member: str, valid_from: int,
                              conditions: Conditions, now: int) -> ListingRow:
        """Post ``conditions`` from ``valid_from``, replacing any change that starts at or after
        it (never in force yet) and ending the listing in force there; one transaction."""
        listing = conditions.listing(member)

        async def work() -> ListingRow:
            point = await self._one("SELECT community FROM metering_points WHERE id = ?",
                                    (member,))
            if point is None or point[0] != community:
                raise UnknownParty(f"no metering point {member} in {community}", id=member)
            settled = await self.settled_until(community)
            if settled is not None and valid_from < settled:
                raise InvalidParty("a listing cannot change a settled interval",
                                   valid_from=valid_from, settled_until=settled)
            pending = await self._rows(
                "SELECT id FROM netting_listings WHERE community = ? AND member = ? "
                "AND valid_from >= ?", (community, member, valid_from))
            await self._db.executemany("DELETE FROM netting_listings WHERE id = ?",
                                       [(r[0],) for r in pending])
            await self._db.execute(
                "UPDATE netting_listings SET valid_to = ? WHERE community = ? AND member = ? "
                "AND valid_from < ? AND (valid_to IS NULL OR valid_to > ?)",
                (valid_from, community, member, valid_from, valid_from))
            cur = await self._db.execute(
                "INSERT INTO netting_listings (community, member, valid_from, valid_to, "
                "buy_limit, sell_ask, green_source, green_only, partner_group, created) "
                "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                (community, member, valid_from, listing.buy_limit, listing.sell_ask,
                 int(listing.green_source), int(listing.green_only), listing.partner_group, now))
            return ListingRow(int(cur.lastrowid or 0), community, member, valid_from, None,
                              listing.buy_limit, listing.sell_ask, listing.green_source,
                              listing.green_only, listing.partner_group)

        return await self._transaction(work)


async def conditions_state(store: SqliteStore, community: str, member: str, now: int
                           ) -> ConditionsState:
    """The conditions in force now, a pending change, and when a change saved now takes effect."""
    tables = SettlementTables(store)
    versions = await tables.terms(community)
    if not versions:
        raise UnknownParty(f"community {community} has no netting terms", id=community)
    seconds = versions[0].interval_seconds
    effective = now - now % seconds + seconds
    settled = await ConditionsTables(store).settled_until(community)
    if settled is not None:
        effective = max(effective, settled)
    rows = await tables.listings(community, member=member)
    in_force = next((r for r in rows if r.valid_from <= now
                     and (r.valid_to is None or now < r.valid_to)), None)
    pending = next((r for r in rows if r.valid_from > now), None)
    terms = terms_at(versions, effective) or versions[-1]
    return ConditionsState(community, member, terms.market, Conditions.of(in_force), pending,
                           effective, seconds)


@dataclass(frozen=True)
class Preview:
    """Last week's intervals re-run with new conditions, beside what was settled."""

    start: int
    end: int
    intervals: int  # intervals of the member re-run
    export_wh: int
    import_wh: int
    sold_local_wh: int  # with the new conditions
    sold_local: int  # µ€ received for it
    feed_in_value: int  # µ€ the same energy would have earned at the feed-in tariff
    bought_local_wh: int
    bought_local: int  # µ€ paid for it (energy only)
    grid_value: int  # µ€ the same energy would have cost at the grid price (energy only)
    settled_sold_local_wh: int  # what was settled (revisions in force)
    settled_sold_local: int
    settled_bought_local_wh: int
    settled_bought_local: int


def run_preview(rows: list[SettlementRow], member: str, conditions: Conditions, start: int,
                end: int) -> Preview:
    """Pure: re-settle each stored input with the member's listing replaced."""
    listing = conditions.listing(member)
    totals = dict.fromkeys(("n", "imp", "exp", "sold_wh", "sold", "feed_n", "bought_wh",
                            "bought", "grid_n", "s_sold_wh", "s_sold", "s_bought_wh",
                            "s_bought"), 0)
    for row in rows:
        settled = SettledInput.decode(row.input)
        iv = settled.interval
        if member not in iv.member_ids:
            continue
        k = iv.member_ids.index(member)
        community = settled.community()
        for key, listings in (("", {**(settled.listings or {}), member: listing}),
                              ("s_", settled.listings)):
            result = settle_interval(community, iv, listings)
            line = result.member_row(member)
            totals[key + "sold_wh"] += line["sold_local_wh"]
            totals[key + "sold"] += line["local_energy_sold"]
            totals[key + "bought_wh"] += line["bought_local_wh"]
            totals[key + "bought"] += line["local_energy_bought"]
            if key == "":
                totals["grid_n"] += line["bought_local_wh"] * result.retail_price
                totals["feed_n"] += line["sold_local_wh"] * result.feed_in_price
        totals["n"] += 1
        totals["imp"] += int(iv.import_wh[k])
        totals["exp"] += int(iv.export_wh[k])
    return Preview(start, end, totals["n"], totals["exp"], totals["imp"], totals["sold_wh"],
                   totals["sold"], div_half_even(totals["feed_n"], 1000), totals["bought_wh"],
                   totals["bought"], div_half_even(totals["grid_n"], 1000), totals["s_sold_wh"],
                   totals["s_sold"], totals["s_bought_wh"], totals["s_bought"])


async def preview_rows(store: SqliteStore, community: str, now: int) -> tuple[int, int,
                                                                           list[SettlementRow]]:
    """The revisions in force of the last seven days before ``now``: the preview's inputs."""
    end = now - now % 900
    start = end - PREVIEW_SECONDS
    rows = await SettlementTables(store).in_force(community, start, end)
    return start, end, [rows[s] for s in sorted(rows)]
