"""Netting and settlement in the store (tables of migration 7): community terms, dynamic prices,
listings, settled interval revisions with their inputs, lines, deltas and origin, exclusions, bills.

Every write is one short IMMEDIATE transaction on the caller's connection. Settled revisions are
only ever inserted: a correction is a new revision (delta lines), never an UPDATE of a settled row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from meterchain.backend.access.model import (
    InvalidParty,
    PartyExists,
    UnknownParty,
    check_id,
    check_time,
)
from meterchain.backend.settlement.records import (
    BillRow,
    NewSettlement,
    SettlementRow,
    bill_from_row,
)
from meterchain.backend.settlement.wallet import post_bills, post_settlements
from meterchain.backend.store.leafdata import pack_leaf_data, unpack_leaf_data
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.reading import MAX_SAFE_INT

OPEN_END = MAX_SAFE_INT + 1


@dataclass(frozen=True, slots=True)
class Terms:
    """A community's netting terms from ``valid_from`` on (prices µ€/kWh, fees µ€, VAT in bp).

    ``retail_price``/``feed_in_price`` None means dynamic: taken from the imported price rows.
    """

    community: str
    valid_from: int
    interval_seconds: int = 900
    deadline_seconds: int = 86_400
    timezone: str = "Europe/Berlin"
    market: str = "prorata"  # or "auction": standing listings clear by call auctions
    rule: str = "mid_market"
    fixed_price: int | None = None
    retail_price: int | None = 300_000
    feed_in_price: int | None = 80_000
    local_network_fee: int = 0
    grid_network_fee: int = 0
    platform_fee: int = 0
    monthly_fee: int = 0
    vat_basis_points: int = 0
    co2_grams_per_kwh: int = 0

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}


TERM_COLUMNS = ("community", "valid_from", "interval_seconds", "deadline_seconds", "timezone",
                "market", "rule", "fixed_price", "retail_price", "feed_in_price",
                "local_network_fee", "grid_network_fee", "platform_fee", "monthly_fee",
                "vat_basis_points", "co2_grams_per_kwh")


@dataclass(frozen=True, slots=True)
class PriceRow:
    kind: str  # "retail" or "feed_in"
    start: int
    end: int
    price: int


@dataclass(frozen=True, slots=True)
class ListingRow:
    id: int
    community: str
    member: str
    valid_from: int
    valid_to: int | None
    buy_limit: int | None
    sell_ask: int | None
    green_source: bool
    green_only: bool
    partner_group: str | None


SETTLEMENT_COLUMNS = (
    "s.community, s.interval_start, s.revision, s.interval_seconds, s.digest, s.supersedes, "
    "s.leaf_id, s.reason, s.settled_at, s.input, s.mode, s.rule, s.retail_price, s.feed_in_price, "
    "s.members, s.missing, s.substituted, s.demand_wh, s.supply_wh, s.local_wh, s.grid_import_wh, "
    "s.grid_export_wh, s.self_sufficiency_ppm, s.self_consumption_ppm, s.co2_avoided_g, s.tiers, "
    "l.leaf_index")
LINE_COLUMNS = ("member", "is_delta", "quality", "import_wh", "export_wh", "bought_local_wh",
                "bought_grid_wh", "sold_local_wh", "sold_grid_wh", "local_energy_bought",
                "local_energy_sold", "grid_energy", "feed_in", "local_network_fee",
                "grid_network_fee", "platform_fee")


@dataclass(frozen=True, slots=True)
class Exclusion:
    community: str
    member: str | None
    device: str
    seq: int
    reason: str
    detail: str
    time: int


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading attributed to a metering point through the meter binding covering its end (or
    ending exactly at it: a replaced meter's final reading)."""

    point: str
    device: str
    seq: int
    meter: str
    end: int
    import_wh: int
    export_wh: int
    leaf_id: int
    leaf_hash: bytes
    message: bytes
    binding_from: int


_POINT_READINGS = (
    "SELECT b.metering_point, r.device, r.seq, r.meter, r.\"end\", r.import_wh, r.export_wh, "
    "r.leaf_id, l.leaf_hash, l.data, b.valid_from FROM meter_bindings b "
    "JOIN readings r ON r.device = b.device AND r.meter = b.meter "
    "AND r.\"end\" >= b.valid_from AND r.\"end\" <= coalesce(b.valid_to, :open) "
    "JOIN leaves l ON l.id = r.leaf_id WHERE b.metering_point = :point ")


class SettlementTables(SqliteTables):
    """Queries of netting and settlement over one store's connection."""

    async def _require_community(self, community: str) -> None:
        if not await self._rows("SELECT 1 FROM communities WHERE id = ?", (community,)):
            raise UnknownParty(f"no community {community}", id=community)

    async def community_utility(self, community: str) -> str | None:
        rows = await self._rows("SELECT utility FROM communities WHERE id = ?", (community,))
        return str(rows[0][0]) if rows else None

    async def grant_covers(self, grant: str, community: str) -> bool:
        """Whether an auditor grant names the whole community."""
        return bool(await self._rows(
            "SELECT 1 FROM grant_scopes WHERE grant_id = ? AND community = ?", (grant, community)))

    # ------------------------------------------------------------------ terms

    async def set_terms(self, terms: Terms, now: int) -> Terms:
        """Terms from ``valid_from`` on; the interval length never changes within a community."""
        check_id(terms.community, "community")
        check_time(terms.valid_from, "valid_from")

        async def work() -> Terms:
            await self._require_community(terms.community)
            existing = await self.terms(terms.community)
            if existing and existing[0].interval_seconds != terms.interval_seconds:
                raise InvalidParty("a community's interval length cannot change",
                                   interval_seconds=existing[0].interval_seconds)
            if terms.valid_from % terms.interval_seconds:
                raise InvalidParty("valid_from must be on the community's interval grid",
                                   valid_from=terms.valid_from)
            settled = await self._rows(
                "SELECT max(interval_start) FROM settlements WHERE community = ?", (terms.community,))
            if settled and settled[0][0] is not None and terms.valid_from <= settled[0][0]:
                raise InvalidParty("terms cannot change for intervals already settled",
                                   valid_from=terms.valid_from, settled_upto=settled[0][0] + 1,
                                   hint="give a valid_from after the last settled interval")
            values = [getattr(terms, c) for c in TERM_COLUMNS]
            await self._db.execute(
                f"INSERT OR REPLACE INTO netting_terms ({', '.join(TERM_COLUMNS)}, created) "
                f"VALUES ({', '.join('?' for _ in TERM_COLUMNS)}, ?)", (*values, now))
            return terms

        return await self._transaction(work)

    async def terms(self, community: str) -> list[Terms]:
        """Every version of a community's terms, oldest first."""
        rows = await self._rows(f"SELECT {', '.join(TERM_COLUMNS)} FROM netting_terms "
                                "WHERE community = ? ORDER BY valid_from", (community,))
        return [Terms(*r) for r in rows]

    async def netting_communities(self) -> list[str]:
        return [r[0] for r in await self._rows(
            "SELECT DISTINCT community FROM netting_terms ORDER BY community")]

    # ------------------------------------------------------------------ prices

    async def add_prices(self, community: str, kind: str, rows: Sequence[tuple[int, int, int]],
                         now: int) -> int:
        """Add dynamic price rows (start, end, price); overlapping stored rows are refused."""
        if kind not in ("retail", "feed_in"):
            raise InvalidParty("price kind must be retail or feed_in", kind=kind)

        async def work() -> int:
            await self._require_community(community)
            first, last = min(r[0] for r in rows), max(r[1] for r in rows)
            clash = await self._rows(
                "SELECT start, \"end\" FROM netting_prices WHERE community = ? AND kind = ? "
                "AND start < ? AND \"end\" > ? LIMIT 1", (community, kind, last, first))
            if clash:
                raise PartyExists(f"{kind} prices already cover [{clash[0][0]}, {clash[0][1]})",
                                  hint="import only periods without prices")
            await self._db.executemany(
                "INSERT INTO netting_prices VALUES (?, ?, ?, ?, ?, ?)",
                [(community, kind, s, e, p, now) for s, e, p in rows])
            return len(rows)

        if not rows:
            return 0
        return await self._transaction(work)

    async def price_at(self, community: str, kind: str, instant: int) -> PriceRow | None:
        rows = await self._rows(
            "SELECT kind, start, \"end\", price FROM netting_prices WHERE community = ? AND kind = ? "
            "AND start <= ? AND \"end\" > ? ORDER BY start DESC LIMIT 1",
            (community, kind, instant, instant))
        return PriceRow(*rows[0]) if rows else None

    async def prices(self, community: str, start: int, end: int) -> list[PriceRow]:
        return [PriceRow(*r) for r in await self._rows(
            "SELECT kind, start, \"end\", price FROM netting_prices WHERE community = ? "
            "AND start < ? AND \"end\" > ? ORDER BY kind, start", (community, end, start))]

    # ---------------------------------------------------------------- listings

    async def post_listing(self, community: str, member: str, valid_from: int,
                           buy_limit: int | None, sell_ask: int | None, green_source: bool,
                           green_only: bool, partner_group: str | None, now: int) -> ListingRow:
        """A member's standing order from ``valid_from``; it ends the member's open listing."""

        async def work() -> ListingRow:
            point = await self._rows("SELECT community FROM metering_points WHERE id = ?", (member,))
            if not point:
                raise UnknownParty(f"no metering point {member}", id=member)
            if point[0][0] != community:
                raise InvalidParty(f"metering point {member} is not a member of {community}",
                                   member=member, community=community)
            settled = await self._rows(
                "SELECT max(interval_start + interval_seconds) FROM settlements "
                "WHERE community = ?", (community,))
            if settled and settled[0][0] is not None and valid_from < settled[0][0]:
                raise InvalidParty("a listing cannot start before the end of the last settled "
                                   "interval", valid_from=valid_from, settled_until=settled[0][0],
                                   hint="give a valid_from at or after settled_until")
            open_rows = await self._rows(
                "SELECT id, valid_from FROM netting_listings WHERE community = ? AND member = ? "
                "AND valid_to IS NULL", (community, member))
            for ident, start in open_rows:
                if valid_from <= start:
                    raise InvalidParty("a new listing must start after the open one",
                                       open_from=start, valid_from=valid_from)
                await self._db.execute("UPDATE netting_listings SET valid_to = ? WHERE id = ?",
                                       (valid_from, ident))
            cur = await self._db.execute(
                "INSERT INTO netting_listings (community, member, valid_from, valid_to, buy_limit, "
                "sell_ask, green_source, green_only, partner_group, created) "
                "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
                (community, member, valid_from, buy_limit, sell_ask, int(green_source),
                 int(green_only), partner_group, now))
            return ListingRow(int(cur.lastrowid or 0), community, member, valid_from, None,
                              buy_limit, sell_ask, green_source, green_only, partner_group)

        return await self._transaction(work)

    async def end_listing(self, community: str, member: str, valid_to: int) -> None:
        async def work() -> None:
            cur = await self._db.execute(
                "UPDATE netting_listings SET valid_to = ? WHERE community = ? AND member = ? "
                "AND valid_to IS NULL AND valid_from < ?", (valid_to, community, member, valid_to))
            if cur.rowcount == 0:
                raise UnknownParty(f"member {member} has no open listing starting before "
                                   f"{valid_to}", member=member)

        await self._transaction(work)

    async def listings(self, community: str, at: int | None = None,
                       member: str | None = None) -> list[ListingRow]:
        """Listings of a community (in force at ``at`` when given), by member."""
        sql = ("SELECT id, community, member, valid_from, valid_to, buy_limit, sell_ask, "
               "green_source, green_only, partner_group FROM netting_listings WHERE community = ?")
        params: list[object] = [community]
        if at is not None:
            sql += " AND valid_from <= ? AND coalesce(valid_to, ?) > ?"
            params += [at, OPEN_END, at]
        if member is not None:
            sql += " AND member = ?"
            params.append(member)
        rows = await self._rows(sql + " ORDER BY member, valid_from", params)
        return [ListingRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), bool(r[8]), r[9])
                for r in rows]

    # --------------------------------------------------------------- readings

    async def points(self, community: str) -> list[str]:
        return [r[0] for r in await self._rows(
            "SELECT id FROM metering_points WHERE community = ? ORDER BY id", (community,))]

    async def bindings(self, community: str) -> list[tuple[str, str, str, int, int | None]]:
        """(point, device, meter, valid_from, valid_to) of the community's points."""
        return [(r[0], r[1], r[2], r[3], r[4]) for r in await self._rows(
            "SELECT b.metering_point, b.device, b.meter, b.valid_from, b.valid_to "
            "FROM meter_bindings b JOIN metering_points m ON m.id = b.metering_point "
            "WHERE m.community = ? ORDER BY b.metering_point, b.valid_from", (community,))]

    async def point_readings(self, point: str, start: int, end: int) -> list[StoredReading]:
        """The point's readings ending in [start, end], plus the last before and first after."""
        params = {"point": point, "open": OPEN_END, "start": start, "end": end}
        rows = await self._rows(
            _POINT_READINGS + 'AND r."end" < :start ORDER BY r."end" DESC, b.valid_from DESC '
            "LIMIT 1", params)
        rows += await self._rows(
            _POINT_READINGS + 'AND r."end" >= :start AND r."end" <= :end '
            'ORDER BY r."end", b.valid_from', params)
        rows += await self._rows(
            _POINT_READINGS + 'AND r."end" > :end ORDER BY r."end", b.valid_from LIMIT 1', params)
        # one list per row: mypy cannot count a Row slice followed by more arguments
        return [StoredReading(*[*r[:9], unpack_leaf_data(r[9], r[7]), r[10]]) for r in rows]

    async def readings_by_leaf_hash(self, hashes: Sequence[bytes]) -> list[tuple[str, int]]:
        """(device, seq) of the stored readings with these leaf hashes."""
        found: list[tuple[str, int]] = []
        for i in range(0, len(hashes), 400):
            chunk = list(hashes[i:i + 400])
            marks = ",".join("?" for _ in chunk)
            found += [(r[0], r[1]) for r in await self._rows(
                "SELECT r.device, r.seq FROM readings r JOIN leaves l ON l.id = r.leaf_id "
                f"WHERE l.leaf_hash IN ({marks})", chunk)]
        return found

    async def newest_reading_leaf(self) -> int:
        rows = await self._rows("SELECT max(leaf_id) FROM readings")
        return int(rows[0][0] or 0)

    async def new_reading_ranges(self, community: str, after: int, upto: int
                                 ) -> list[tuple[str, int, int]]:
        """(point, first end, last end) of the community's readings with leaf id in (after, upto]."""
        return [(r[0], r[1], r[2]) for r in await self._rows(
            "SELECT b.metering_point, min(r.\"end\"), max(r.\"end\") FROM readings r "
            "JOIN meter_bindings b ON r.device = b.device AND r.meter = b.meter "
            "AND r.\"end\" >= b.valid_from AND r.\"end\" <= coalesce(b.valid_to, ?) "
            "JOIN metering_points m ON m.id = b.metering_point "
            "WHERE m.community = ? AND r.leaf_id > ? AND r.leaf_id <= ? "
            "GROUP BY b.metering_point", (OPEN_END, community, after, upto))]

    async def new_readings(self, community: str, after: int, upto: int
                           ) -> list[tuple[str, str, int, int]]:
        """(point, device, seq, end) of the community's readings with leaf id in (after, upto]."""
        return [(r[0], r[1], r[2], r[3]) for r in await self._rows(
            "SELECT b.metering_point, r.device, r.seq, r.\"end\" FROM readings r "
            "JOIN meter_bindings b ON r.device = b.device AND r.meter = b.meter "
            "AND r.\"end\" >= b.valid_from AND r.\"end\" <= coalesce(b.valid_to, ?) "
            "JOIN metering_points m ON m.id = b.metering_point "
            "WHERE m.community = ? AND r.leaf_id > ? AND r.leaf_id <= ? ORDER BY r.leaf_id",
            (OPEN_END, community, after, upto))]

    # ------------------------------------------------------------ settlements

    async def state(self, community: str) -> tuple[int, int] | None:
        rows = await self._rows("SELECT reading_cursor, settled_upto FROM settlement_state "
                                "WHERE community = ?", (community,))
        return (rows[0][0], rows[0][1]) if rows else None

    async def in_force(self, community: str, start: int, end: int) -> dict[int, SettlementRow]:
        """The newest revision of each settled interval starting in [start, end)."""
        rows = await self._rows(
            f"SELECT {SETTLEMENT_COLUMNS} FROM settlements s JOIN leaves l ON l.id = s.leaf_id "
            "WHERE s.community = ? AND s.interval_start >= ? AND s.interval_start < ? "
            "AND s.revision = (SELECT max(revision) FROM settlements x WHERE x.community = "
            "s.community AND x.interval_start = s.interval_start) ORDER BY s.interval_start",
            (community, start, end))
        return {r[1]: SettlementRow(*r) for r in rows}

    async def revisions(self, community: str, start: int, end: int) -> list[SettlementRow]:
        """Every revision of the intervals starting in [start, end), by interval then revision."""
        rows = await self._rows(
            f"SELECT {SETTLEMENT_COLUMNS} FROM settlements s JOIN leaves l ON l.id = s.leaf_id "
            "WHERE s.community = ? AND s.interval_start >= ? AND s.interval_start < ? "
            "ORDER BY s.interval_start, s.revision", (community, start, end))
        return [SettlementRow(*r) for r in rows]

    async def settlement(self, community: str, interval_start: int,
                         revision: int | None = None) -> SettlementRow | None:
        if revision is None:
            found = await self.in_force(community, interval_start, interval_start + 1)
            return found.get(interval_start)
        rows = await self._rows(
            f"SELECT {SETTLEMENT_COLUMNS} FROM settlements s JOIN leaves l ON l.id = s.leaf_id "
            "WHERE s.community = ? AND s.interval_start = ? AND s.revision = ?",
            (community, interval_start, revision))
        return SettlementRow(*rows[0]) if rows else None

    async def leaf_data(self, leaf_id: int) -> tuple[bytes, bytes, int | None]:
        """(leaf data unpacked, leaf hash, leaf index) of one leaf."""
        rows = await self._rows("SELECT data, leaf_hash, leaf_index FROM leaves WHERE id = ?",
                                (leaf_id,))
        return unpack_leaf_data(rows[0][0], leaf_id), rows[0][1], rows[0][2]

    async def lines(self, community: str, start: int, end: int, member: str | None = None,
                    limit: int = 10_000) -> list[tuple[int, int, dict[str, int | None]]]:
        """(interval start, revision, line) of member lines and delta lines, oldest first."""
        sql = (f"SELECT interval_start, revision, {', '.join(LINE_COLUMNS)} FROM settlement_lines "
               "WHERE community = ? AND interval_start >= ? AND interval_start < ?")
        params: list[object] = [community, start, end]
        if member is not None:
            sql += " AND member = ?"
            params.append(member)
        rows = await self._rows(sql + " ORDER BY interval_start, revision, member LIMIT ?",
                                [*params, limit])
        return [(r[0], r[1], dict(zip(LINE_COLUMNS, r[2:], strict=True))) for r in rows]

    async def origin(self, community: str, interval_start: int, revision: int
                     ) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in await self._rows(
            "SELECT seller, export_wh FROM settlement_origin WHERE community = ? AND "
            "interval_start = ? AND revision = ? ORDER BY seller", (community, interval_start,
                                                                   revision))]

    async def commit(self, community: str, settled: Sequence[NewSettlement],
                     exclusions: Sequence[Exclusion], cursor: int, settled_upto: int) -> None:
        """Write a pass's revisions, their leaves, exclusions and the state, in one transaction."""

        # Every row is built first and written with one executemany per table: a transaction
        # of a few statements holds the write lock briefly even when the event loop is busy.
        async def work() -> None:
            rows = await self._rows("SELECT max(coalesce((SELECT seq FROM sqlite_sequence "
                                    "WHERE name = 'leaves'), 0), coalesce(max(id), 0)) FROM leaves")
            next_id = int(rows[0][0] or 0)
            leaves, settlements, lines, origin = [], [], [], []
            for item in settled:
                next_id += 1
                row = item.row
                leaves.append((next_id, pack_leaf_data(item.leaf_data), leaf_hash(item.leaf_data),
                               row.settled_at))
                values = [getattr(row, name) for name in SettlementRow.__slots__][:-1]
                values[6] = next_id
                settlements.append(values)
                key = (row.community, row.interval_start, row.revision)
                lines += [(*key, *line) for line in item.lines]
                origin += [(*key, seller, wh) for seller, wh in item.origin]
            if settled:
                await self._db.executemany(
                    "INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                    "VALUES (?, 'settlement', ?, ?, ?)", leaves)
                await self._db.executemany(
                    f"INSERT INTO settlements VALUES ({', '.join('?' for _ in settlements[0])})",
                    settlements)
                await self._db.executemany(
                    f"INSERT INTO settlement_lines VALUES ({', '.join('?' for _ in range(19))})",
                    lines)
                await self._db.executemany(
                    "INSERT INTO settlement_origin VALUES (?, ?, ?, ?, ?)", origin)
                await post_settlements(self._db, community, settled)  # the wallets
            await self._db.executemany(
                "INSERT OR IGNORE INTO settlement_exclusions (community, member, device, seq, "
                "reason, detail, time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(x.community, x.member, x.device, x.seq, x.reason, x.detail[:500], x.time)
                 for x in exclusions])
            await self._db.execute(
                "INSERT INTO settlement_state VALUES (?, ?, ?) ON CONFLICT (community) DO UPDATE "
                "SET reading_cursor = excluded.reading_cursor, settled_upto = excluded.settled_upto",
                (community, cursor, settled_upto))

        await self._transaction(work)

    async def exclusions(self, community: str, limit: int = 1000) -> list[Exclusion]:
        return [Exclusion(*r) for r in await self._rows(
            "SELECT community, member, device, seq, reason, detail, time FROM "
            "settlement_exclusions WHERE community = ? ORDER BY id LIMIT ?", (community, limit))]

    # ------------------------------------------------------------------ bills

    async def latest_bill(self, community: str, member: str, period_start: int) -> BillRow | None:
        rows = await self._rows(
            "SELECT community, member, period_start, version, period_end, issued, basis, total, "
            "baseline_total, savings, co2_avoided_g, energy, lines FROM netting_bills WHERE "
            "community = ? AND member = ? AND period_start = ? ORDER BY version DESC LIMIT 1",
            (community, member, period_start))
        return bill_from_row(rows[0]) if rows else None

    async def bills(self, community: str | None = None, member: str | None = None,
                    period_start: int | None = None) -> list[BillRow]:
        """The newest version of each bill matching the filters, by period then member."""
        where, params = [], []
        for column, value in (("community", community), ("member", member),
                              ("period_start", period_start)):
            if value is not None:
                where.append(f"b.{column} = ?")
                params.append(value)
        sql = ("SELECT b.community, b.member, b.period_start, b.version, b.period_end, b.issued, "
               "b.basis, b.total, b.baseline_total, b.savings, b.co2_avoided_g, b.energy, b.lines "
               "FROM netting_bills b WHERE b.version = (SELECT max(version) FROM netting_bills x "
               "WHERE x.community = b.community AND x.member = b.member AND x.period_start = "
               "b.period_start)")
        if where:
            sql += " AND " + " AND ".join(where)
        return [bill_from_row(r) for r in await self._rows(sql + " ORDER BY b.period_start, b.member",
                                                   params)]

    async def bill_basis(self, community: str, period_start: int, period_end: int
                         ) -> bytes | None:
        """SHA-256 over the digests in force in the period, by interval; None if none settled."""
        rows = await self._rows(
            "SELECT s.digest FROM settlements s WHERE s.community = ? AND s.interval_start >= ? "
            "AND s.interval_start < ? AND s.revision = (SELECT max(revision) FROM settlements x "
            "WHERE x.community = s.community AND x.interval_start = s.interval_start) "
            "ORDER BY s.interval_start", (community, period_start, period_end))
        if not rows:
            return None
        return hashlib.sha256(b"".join(r[0] for r in rows)).digest()

    async def has_bill_basis(self, community: str, period_start: int, basis: bytes) -> bool:
        return bool(await self._rows(
            "SELECT 1 FROM netting_bills WHERE community = ? AND period_start = ? AND basis = ? "
            "LIMIT 1", (community, period_start, basis)))

    async def add_bills(self, bills: Sequence[BillRow]) -> None:
        async def work() -> None:
            await post_bills(self._db, bills)  # monthly fee and VAT into the wallets
            await self._db.executemany(
                "INSERT INTO netting_bills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(b.community, b.member, b.period_start, b.version, b.period_end, b.issued,
                  b.basis, b.total, b.baseline_total, b.savings, b.co2_avoided_g,
                  json.dumps(b.energy, sort_keys=True), json.dumps(b.lines)) for b in bills])

        if bills:
            await self._transaction(work)
