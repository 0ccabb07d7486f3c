"""Ratings of trading partners: advisory only, aggregated only.

A household may rate the households it actually traded with in the last 30 days: in an auction
the other side of its matched (buyer, seller) pairs, in pro-rata netting the sellers in the
seller mix of the intervals where it bought locally. One rating (1 to 5 stars, an optional short
comment) per partner and local month, changeable within the month.

What anyone sees: a rated household's aggregate (how many households rated it, their mean, each
rater's newest rating), and only once at least ``MIN_RATERS`` households have; never who rated
whom, never a single rating or comment of another household. A rater sees its partners under a
handle that is stable for it and means nothing to anyone else (HMAC with the database's own
salt), by display name only if the partner opted in, otherwise as "a neighbour".

No netting or clearing code reads ratings (a test asserts that no module of the engine or the
runner imports this one): they never change a price, a match or a line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from meterchain.backend.access.model import UnknownParty
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.store import SqliteStore
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.errors import MeterchainError

WINDOW = 30 * 86_400
MIN_RATERS = 5
MAX_COMMENT = 280
MAX_NAME = 40
NEIGHBOUR = "a neighbour"


class RatingError(MeterchainError):
    """A rating or profile the market refuses (not a partner, stars out of range)."""

    check = "invalid"


@dataclass(frozen=True)
class Aggregate:
    raters: int
    stars_sum: int

    @property
    def mean(self) -> str:
        """The mean to one decimal, computed on integers (half up)."""
        tenths = (self.stars_sum * 20 + self.raters) // (2 * self.raters)
        return f"{tenths // 10}.{tenths % 10}"


@dataclass(frozen=True)
class Partner:
    handle: str  # stable for this rater, meaningless to anyone else
    label: str  # display name if the partner opted in, else "a neighbour"
    bought_from: int  # quarter hours the rater bought from it
    sold_to: int  # quarter hours the rater sold to it
    last: int  # the last such interval's start
    stars: int | None  # the rater's rating this month
    comment: str | None
    aggregate: Aggregate | None  # shown only with ≥ MIN_RATERS raters


class RatingTables(SqliteTables):
    """Ratings, display-name opt-ins and the partner handles' salt."""

    async def salt(self) -> bytes:
        row = await self._one("SELECT salt FROM market_salt WHERE id = 1")
        if row is None:
            raise MeterchainError("the market salt is missing (migration 11)")
        return bytes(row[0])

    async def profile(self, household: str) -> tuple[str | None, bool]:
        row = await self._one("SELECT display_name, show_name FROM market_profiles "
                              "WHERE household = ?", (household,))
        return (None, False) if row is None else (row[0], bool(row[1]))

    async def labels(self, households: list[str]) -> dict[str, str]:
        """Each household's public label: its display name if it opted in, else a neighbour."""
        out = dict.fromkeys(households, NEIGHBOUR)
        for i in range(0, len(households), 400):
            chunk = households[i:i + 400]
            marks = ", ".join("?" for _ in chunk)
            for household, name in await self._rows(
                    f"SELECT household, display_name FROM market_profiles WHERE household IN "
                    f"({marks}) AND show_name = 1 AND display_name IS NOT NULL", chunk):
                out[household] = str(name)
        return out

    async def set_profile(self, household: str, display_name: str | None, show: bool) -> None:
        name = None if display_name is None else display_name.strip()
        if name is not None and (len(name) > MAX_NAME or not re.fullmatch(r"[^\x00-\x1f\x7f]+",
                                                                           name)):
            raise RatingError(f"a display name has 1 to {MAX_NAME} printable characters")
        if show and not name:
            raise RatingError("to show a display name, enter one")

        async def work() -> None:
            await self._db.execute(
                "INSERT INTO market_profiles VALUES (?, ?, ?) ON CONFLICT (household) DO UPDATE "
                "SET display_name = excluded.display_name, show_name = excluded.show_name",
                (household, name or None, int(show)))

        await self._transaction(work)

    async def rate(self, rater: str, rated: str, month: str, stars: int, comment: str | None,
                   now: int) -> None:
        """Rate ``rated`` for ``month``, replacing the rater's rating of that month."""

        async def work() -> None:
            await self._db.execute(
                "INSERT INTO market_ratings VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rater, rated, month) DO UPDATE SET stars = excluded.stars, "
                "comment = excluded.comment, updated = excluded.updated",
                (rater, rated, month, stars, comment, now, now))

        await self._transaction(work)

    async def own(self, rater: str, month: str) -> dict[str, tuple[int, str | None]]:
        return {str(r[0]): (int(r[1]), r[2]) for r in await self._rows(
            "SELECT rated, stars, comment FROM market_ratings WHERE rater = ? AND month = ?",
            (rater, month))}

    async def aggregates(self, rated: list[str] | None = None) -> dict[str, Aggregate]:
        """Aggregates of each rater's newest rating, only where ≥ MIN_RATERS households rated."""
        rows = await self._rows(
            "SELECT r.rated, count(*), sum(r.stars) FROM market_ratings r WHERE r.month = "
            "(SELECT max(x.month) FROM market_ratings x WHERE x.rater = r.rater AND "
            "x.rated = r.rated) GROUP BY r.rated HAVING count(*) >= ?", (MIN_RATERS,))
        found = {str(r[0]): Aggregate(int(r[1]), int(r[2])) for r in rows}
        return found if rated is None else {h: found[h] for h in rated if h in found}

    # ------------------------------------------ who traded with whom (settlements in force)

    async def community_occupancies(self, community: str
                                    ) -> list[tuple[str, str, int, int | None]]:
        """(metering point, household, valid_from, valid_to) of the community's points."""
        return [(str(r[0]), str(r[1]), int(r[2]), r[3]) for r in await self._rows(
            "SELECT o.metering_point, o.household, o.valid_from, o.valid_to FROM occupancies o "
            "JOIN metering_points m ON m.id = o.metering_point WHERE m.community = ?",
            (community,))]

    async def settled_in_force(self, community: str, start: int, end: int
                               ) -> list[tuple[int, int, str, str]]:
        """(interval start, revision, mode, tiers JSON) of each interval in [start, end) at its
        newest revision."""
        return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in await self._rows(
            "SELECT s.interval_start, s.revision, s.mode, s.tiers FROM settlements s "
            "WHERE s.community = ? AND s.interval_start >= ? AND s.interval_start < ? "
            "AND s.revision = (SELECT max(revision) FROM settlements x "
            "WHERE x.community = s.community AND x.interval_start = s.interval_start)",
            (community, start, end))]

    async def intervals_bought(self, community: str, members: list[str], start: int, end: int
                               ) -> set[int]:
        """Starts of the intervals in [start, end) in which ``members`` bought local energy."""
        marks = ", ".join("?" for _ in members) or "''"
        return {int(r[0]) for r in await self._rows(
            f"SELECT interval_start FROM settlement_lines WHERE community = ? AND member IN "
            f"({marks}) AND interval_start >= ? AND interval_start < ? GROUP BY interval_start "
            "HAVING sum(bought_local_wh) > 0", (community, *members, start, end))}

    async def origin_sellers(self, community: str, interval_start: int, revision: int
                             ) -> list[str]:
        """The sellers of a pro-rata interval's local energy (``settlement_origin``)."""
        return [str(r[0]) for r in await self._rows(
            "SELECT seller FROM settlement_origin WHERE community = ? AND interval_start = ? "
            "AND revision = ?", (community, interval_start, revision))]


def handle(salt: bytes, rater: str, partner: str) -> str:
    """The partner's handle as ``rater`` sees it: the same every time, unlinkable across raters."""
    return hmac.new(salt, f"{rater}\x00{partner}".encode(), hashlib.sha256).hexdigest()[:12]


def month_key(now: int, zone: str) -> str:
    return dt.datetime.fromtimestamp(now, ZoneInfo(zone)).strftime("%Y-%m")


async def traded_with(store: SqliteStore, household: str, now: int
                      ) -> dict[str, tuple[int, int, int]]:
    """{partner household: (intervals bought from it, intervals sold to it, last start)} over the
    last WINDOW seconds, from the settlements in force (auction pairs; pro-rata seller mixes)."""
    found = await PartyTables(store).household(household)
    if found is None:
        raise UnknownParty(f"no household {household}", id=household)
    community, tables = found.community, RatingTables(store)
    occupancies = await tables.community_occupancies(community)

    by_point: dict[str, list[tuple[str, int, int | None]]] = {}
    for p, h, f, t in occupancies:
        by_point.setdefault(p, []).append((h, f, t))
    mine = {p for p, h, _, _ in occupancies if h == household}

    def occupant(point: str, instant: int) -> str | None:
        for h, f, t in by_point.get(point, ()):
            if f <= instant and (t is None or instant < t):
                return h
        return None

    start = now - WINDOW
    settled = await tables.settled_in_force(community, start, now)
    partners: dict[str, list[int]] = {}

    def add(partner: str | None, side: int, when: int) -> None:
        if partner is None or partner == household:
            return
        entry = partners.setdefault(partner, [0, 0, when])
        entry[side] += 1
        entry[2] = max(entry[2], when)

    prorata: list[tuple[int, int]] = []
    for interval_start, revision, mode, tiers in settled:
        if mode != "auction":
            prorata.append((int(interval_start), int(revision)))
            continue
        seen: set[tuple[str, int]] = set()
        for _, _, _, pairs in json.loads(tiers):
            for buyer, seller, _ in pairs:
                if buyer not in mine and seller not in mine:
                    continue  # neither side was ever this household's
                if occupant(buyer, interval_start) == household:
                    seen.add((seller, 0))
                if occupant(seller, interval_start) == household:
                    seen.add((buyer, 1))
        for point, side in seen:
            add(occupant(point, interval_start), side, int(interval_start))
    if prorata:
        bought = await tables.intervals_bought(community, sorted(mine), start, now)
        for interval_start, revision in prorata:
            if interval_start not in bought:
                continue
            for seller in await tables.origin_sellers(community, interval_start, revision):
                add(occupant(seller, interval_start), 0, interval_start)
    return {h: (v[0], v[1], v[2]) for h, v in partners.items()}


async def partners(store: SqliteStore, household: str, now: int, zone: str) -> list[Partner]:
    """The households ``household`` may rate now, newest trade first."""
    tables = RatingTables(store)
    traded = await traded_with(store, household, now)
    salt = await tables.salt()
    labels = await tables.labels(sorted(traded))
    own = await tables.own(household, month_key(now, zone))
    aggregates = await tables.aggregates(sorted(traded))
    out = []
    for h, (b, s, last) in traded.items():
        stars, comment = own.get(h, (None, None))
        out.append(Partner(handle(salt, household, h), labels[h], b, s, last, stars, comment, aggregates.get(h)))
    return sorted(out, key=lambda p: (-p.last, p.handle))


async def rate(reader: SqliteStore, writer: SqliteStore, household: str, partner_handle: str,
               stars: int, comment: str | None, now: int, zone: str) -> Partner:
    """Rate the partner behind ``partner_handle``; refused unless the two traded recently."""
    if isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5:
        raise RatingError("stars must be 1 to 5", stars=stars)
    text = (comment or "").strip() or None
    if text is not None and (len(text) > MAX_COMMENT or re.search(r"[\x00-\x08\x0b-\x1f\x7f]",
                                                                  text)):
        raise RatingError(f"a comment has at most {MAX_COMMENT} printable characters")
    traded = await traded_with(reader, household, now)
    salt = await RatingTables(reader).salt()
    rated = next((h for h in traded if handle(salt, household, h) == partner_handle), None)
    if rated is None:
        raise UnknownParty("no trading partner of the last 30 days with this handle",
                           handle=partner_handle[:20])
    await RatingTables(writer).rate(household, rated, month_key(now, zone), stars, text, now)
    found = [p for p in await partners(reader, household, now, zone) if p.handle == partner_handle]
    return found[0]


async def community_aggregates(store: SqliteStore, community: str) -> list[tuple[str, Aggregate]]:
    """(label, aggregate) of the community's households rated by ≥ MIN_RATERS households."""
    members = [h.id for h in await PartyTables(store).households(community)]
    tables = RatingTables(store)
    aggregates = await tables.aggregates(members)
    labels = await tables.labels(sorted(aggregates))
    return sorted(((labels[h], a) for h, a in aggregates.items()),
                  key=lambda x: (-x[1].stars_sum * 1000 // x[1].raters, x[0]))
