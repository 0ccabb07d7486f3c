"""Parties, bindings, grants and API keys in the store (tables of migration 3), and the one query
that decides which readings a principal may see.

Visibility is a set of *windows* ``(metering point, from, to)`` per principal: a utility's are
its metering points for all time, a household's are its occupancies, an auditor's are the points
and communities of its grant. A reading is visible when a meter binding ties its ``(device,
meter)`` to a metering point at its ``end`` and a window of the principal covers that ``end``.
Every reading route goes through :meth:`PartyTables.readings` or :meth:`PartyTables.reading_point`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from meterchain.backend.access.assignments import log_assignment
from meterchain.backend.access.model import (
    ApiKey,
    BindingOverlap,
    Community,
    Grant,
    Household,
    InvalidParty,
    KeyKind,
    MeterBinding,
    MeteringPoint,
    Occupancy,
    PartyExists,
    PointKind,
    Principal,
    UnknownParty,
    Utility,
    check_device,
    check_id,
    check_meter,
    check_name,
    check_period,
    check_time,
    new_key_id,
    new_token,
    token_hash,
)
from meterchain.backend.store.records import ReadingRow
from meterchain.backend.store.sqlite import READING_COLUMNS, reading_row
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.humantime import human_time
from meterchain.contract.reading import MAX_SAFE_INT

#: Stands for an open end (``valid_to`` NULL) in comparisons: later than any reading's ``end``.
OPEN_END = MAX_SAFE_INT + 1
#: ``last_used`` is written at most once per key per this many seconds (reads stay cheap).
LAST_USED_RESOLUTION = 60

_WINDOWS = {
    KeyKind.ADMIN: "SELECT id, 0, :open FROM metering_points",
    KeyKind.UTILITY: "SELECT id, 0, :open FROM metering_points WHERE utility = :subject",
    KeyKind.HOUSEHOLD: (
        "SELECT metering_point, valid_from, coalesce(valid_to, :open) FROM occupancies "
        "WHERE household = :subject"
    ),
    KeyKind.AUDITOR: (
        "SELECT metering_point, 0, :open FROM grant_scopes "
        "WHERE grant_id = :subject AND metering_point IS NOT NULL "
        "UNION SELECT m.id, 0, :open FROM metering_points m "
        "JOIN grant_scopes g ON g.community = m.community WHERE g.grant_id = :subject"
    ),
}
# A reading joined to its metering point (through the binding covering its end) and to a window.
# Driven from the bindings (CROSS JOIN): each binding's readings are one range of the unique
# (device, meter, end) index, the only way into readings by time.
_VISIBLE_READINGS = (
    "WITH w(mp, wf, wt) AS ({windows}) "
    f"SELECT DISTINCT {READING_COLUMNS}, b.metering_point FROM meter_bindings b "
    "CROSS JOIN readings r ON r.device = b.device AND r.meter = b.meter "
    ' AND r."end" >= b.valid_from AND r."end" < coalesce(b.valid_to, :open) '
    "JOIN leaves l ON l.id = r.leaf_id "
    'JOIN w ON w.mp = b.metering_point AND r."end" >= w.wf AND r."end" < w.wt '
)


class PartyTables(SqliteTables):
    """Queries over one store's connection; every write is one short IMMEDIATE transaction."""

    async def _insert_new(self, table: str, what: str, ident: str, values: tuple[object, ...]) -> None:
        if await self._one(f"SELECT 1 FROM {table} WHERE id = ?", (ident,)):
            raise PartyExists(f"{what} {ident} exists already", id=ident)
        marks = ", ".join("?" for _ in values)
        await self._db.execute(f"INSERT INTO {table} VALUES ({marks})", values)

    async def _require(self, table: str, what: str, ident: str) -> sqlite3.Row:
        row = await self._one(f"SELECT * FROM {table} WHERE id = ?", (ident,))
        if row is None:
            raise UnknownParty(f"no {what} {ident}", id=ident)
        return row

    # ------------------------------------------------------------------ parties

    async def add_utility(self, ident: str, name: str, now: int) -> Utility:
        utility = Utility(check_id(ident, "utility"), check_name(name), now)
        await self._transaction(lambda: self._insert_new(
            "utilities", "utility", utility.id, (utility.id, utility.name, now)))
        return utility

    async def add_community(self, ident: str, utility: str, name: str, now: int) -> Community:
        community = Community(check_id(ident, "community"), check_id(utility, "utility"),
                              check_name(name), now)

        async def work() -> None:
            await self._require("utilities", "utility", utility)
            await self._insert_new("communities", "community", community.id,
                                   (community.id, utility, community.name, now))

        await self._transaction(work)
        return community

    async def add_household(self, ident: str, community: str, name: str, now: int) -> Household:
        household = Household(check_id(ident, "household"), check_id(community, "community"),
                              check_name(name), now)

        async def work() -> None:
            await self._require("communities", "community", community)
            await self._insert_new("households", "household", household.id,
                                   (household.id, community, household.name, now))

        await self._transaction(work)
        return household

    async def add_metering_point(self, ident: str, utility: str, community: str | None,
                                 kind: PointKind, now: int) -> MeteringPoint:
        point = MeteringPoint(check_id(ident, "metering point"), check_id(utility, "utility"),
                              None if community is None else check_id(community, "community"),
                              kind, now)

        async def work() -> None:
            await self._require("utilities", "utility", utility)
            if community is not None:
                row = await self._require("communities", "community", community)
                if row[1] != utility:
                    raise InvalidParty(
                        f"community {community} belongs to utility {row[1]}, not {utility}",
                        community=community, utility=utility)
            await self._insert_new("metering_points", "metering point", point.id,
                                   (point.id, utility, community, kind.value, now))

        await self._transaction(work)
        return point

    async def metering_point(self, ident: str) -> MeteringPoint | None:
        row = await self._one("SELECT id, utility, community, kind, created FROM metering_points "
                              "WHERE id = ?", (ident,))
        return None if row is None else _point(row)

    async def utilities(self) -> list[Utility]:
        return [Utility(*r) for r in await self._rows("SELECT * FROM utilities ORDER BY id")]

    async def communities(self) -> list[Community]:
        return [Community(*r) for r in await self._rows("SELECT * FROM communities ORDER BY id")]

    async def households(self, community: str | None = None) -> list[Household]:
        """Every household, or those of ``community``, by id."""
        return [Household(*r) for r in await self._rows(
            "SELECT id, community, name, created FROM households "
            "WHERE ? IS NULL OR community = ? ORDER BY id", (community, community))]

    async def household(self, ident: str) -> Household | None:
        row = await self._one("SELECT id, community, name, created FROM households WHERE id = ?",
                              (ident,))
        return None if row is None else Household(*row)

    async def household_timezone(self, ident: str) -> str | None:
        """The time zone the operator set for the household (``household_settings``), if any."""
        row = await self._one("SELECT timezone FROM household_settings WHERE household = ?",
                              (ident,))
        return None if row is None else str(row[0])

    # ----------------------------------------------------------------- bindings

    async def bind_meter(self, point: str, device: str, meter: str, valid_from: int,
                         valid_to: int | None, now: int) -> MeterBinding:
        """Tie ``(device, meter)`` to ``point`` over [from, to); refuse any overlap with another
        binding of the same meter or the same metering point."""
        check_id(point, "metering point")
        check_device(device)
        check_meter(meter)
        start, stop = check_period(valid_from, valid_to)

        async def work() -> MeterBinding:
            await self._require("metering_points", "metering point", point)
            clash = await self._one(
                "SELECT id, metering_point, device, meter, valid_from, valid_to FROM meter_bindings "
                "WHERE ((device = ? AND meter = ?) OR metering_point = ?) "
                "AND valid_from < ? AND ? < coalesce(valid_to, ?) ORDER BY valid_from LIMIT 1",
                (device, meter, point, OPEN_END if stop is None else stop, start, OPEN_END),
            )
            if clash is not None:
                other = MeterBinding(*clash)
                same_meter = (other.device, other.meter) == (device, meter)
                raise BindingOverlap(
                    (f"meter {device}/{meter}" if same_meter else f"metering point {point}")
                    + f" is already bound over {_period(other.valid_from, other.valid_to)} "
                    f"(binding {other.id}: {other.device}/{other.meter} -> {other.metering_point})"
                    "; end that binding first (a meter exchange ends the old binding where the "
                    "new one starts)",
                    binding=other.id)
            cur = await self._db.execute(
                "INSERT INTO meter_bindings (metering_point, device, meter, valid_from, valid_to, "
                "created) VALUES (?, ?, ?, ?, ?, ?)", (point, device, meter, start, stop, now))
            binding = MeterBinding(int(cur.lastrowid or 0), point, device, meter, start, stop)
            await log_assignment(self._db, binding, now)  # the log says so too (issue 17)
            return binding

        return await self._transaction(work)

    async def end_meter_binding(self, point: str, valid_to: int, now: int | None = None) -> MeterBinding:
        """End the open meter binding of ``point`` at ``valid_to`` (a meter exchange or removal)."""
        return await self._end("meter_bindings", "meter binding", point, valid_to, now)

    async def meter_bindings(self, point: str | None = None) -> list[MeterBinding]:
        sql = "SELECT id, metering_point, device, meter, valid_from, valid_to FROM meter_bindings"
        params: tuple[object, ...] = ()
        if point is not None:
            sql, params = sql + " WHERE metering_point = ?", (point,)
        return [MeterBinding(*r) for r in await self._rows(sql + " ORDER BY metering_point, valid_from", params)]

    async def add_occupancy(self, point: str, household: str, valid_from: int,
                            valid_to: int | None, now: int) -> Occupancy:
        """``household`` holds ``point`` over [from, to); refuse overlap with another occupancy."""
        check_id(point, "metering point")
        check_id(household, "household")
        start, stop = check_period(valid_from, valid_to)

        async def work() -> Occupancy:
            await self._require("metering_points", "metering point", point)
            await self._require("households", "household", household)
            clash = await self._one(
                "SELECT id, metering_point, household, valid_from, valid_to FROM occupancies "
                "WHERE metering_point = ? AND valid_from < ? AND ? < coalesce(valid_to, ?) "
                "ORDER BY valid_from LIMIT 1",
                (point, OPEN_END if stop is None else stop, start, OPEN_END),
            )
            if clash is not None:
                other = Occupancy(*clash)
                raise BindingOverlap(
                    f"metering point {point} is already held by household {other.household} over "
                    f"{_period(other.valid_from, other.valid_to)} (occupancy {other.id}); end that "
                    "occupancy first (move-out), then add the new one from that time",
                    occupancy=other.id)
            cur = await self._db.execute(
                "INSERT INTO occupancies (metering_point, household, valid_from, valid_to, created) "
                "VALUES (?, ?, ?, ?, ?)", (point, household, start, stop, now))
            occupancy = Occupancy(int(cur.lastrowid or 0), point, household, start, stop)
            await log_assignment(self._db, occupancy, now)
            return occupancy

        return await self._transaction(work)

    async def end_occupancy(self, point: str, valid_to: int, now: int | None = None) -> Occupancy:
        """End the open occupancy of ``point`` at ``valid_to`` (the household moves out)."""
        return await self._end("occupancies", "occupancy", point, valid_to, now)

    async def occupancies(self, point: str | None = None) -> list[Occupancy]:
        sql = "SELECT id, metering_point, household, valid_from, valid_to FROM occupancies"
        params: tuple[object, ...] = ()
        if point is not None:
            sql, params = sql + " WHERE metering_point = ?", (point,)
        return [Occupancy(*r) for r in await self._rows(sql + " ORDER BY metering_point, valid_from", params)]

    async def _end(self, table: str, what: str, point: str, valid_to: int,  # untyped: MeterBinding or Occupancy
                   now: int | None):
        check_id(point, "metering point")
        stop = check_time(valid_to, "valid_to")
        recorded = int(time.time()) if now is None else check_time(now, "now")
        columns = ("id, metering_point, device, meter, valid_from, valid_to" if table == "meter_bindings"
                   else "id, metering_point, household, valid_from, valid_to")
        build = MeterBinding if table == "meter_bindings" else Occupancy

        async def work():
            await self._require("metering_points", "metering point", point)
            row = await self._one(
                f"SELECT {columns} FROM {table} WHERE metering_point = ? AND valid_to IS NULL", (point,))
            if row is None:
                raise UnknownParty(f"metering point {point} has no open {what}",
                                   hint=f"list its bindings; only an open {what} can be ended")
            current = build(*row)
            if stop <= current.valid_from:
                raise InvalidParty(f"the {what} starts at {human_time(current.valid_from)}; it can only end "
                                   "later than that", valid_to=stop)
            await self._db.execute(f"UPDATE {table} SET valid_to = ? WHERE id = ?", (stop, current.id))
            ended = build(*row[:-1], stop)
            await log_assignment(self._db, ended, recorded)  # the binding's end, logged (issue 17)
            return ended

        return await self._transaction(work)

    async def point_of(self, device: str, meter: str, end: int) -> str | None:
        """The metering point a reading ``(device, meter, end)`` belongs to, if any."""
        row = await self._one(
            "SELECT metering_point FROM meter_bindings WHERE device = ? AND meter = ? "
            "AND valid_from <= ? AND ? < coalesce(valid_to, ?)", (device, meter, end, end, OPEN_END))
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------- grants

    async def add_grant(self, ident: str, label: str, expires: int, points: Sequence[str],
                        communities: Sequence[str], now: int) -> Grant:
        grant = Grant(check_id(ident, "grant"), check_name(label, "label"),
                      check_time(expires, "expires"),
                      tuple(dict.fromkeys(check_id(p, "metering point") for p in points)),
                      tuple(dict.fromkeys(check_id(c, "community") for c in communities)))
        if not grant.metering_points and not grant.communities:
            raise InvalidParty("a grant names at least one metering point or community", grant=ident)
        if expires <= now:
            raise InvalidParty("a grant must expire in the future", expires=expires, now=now)

        async def work() -> None:
            for point in grant.metering_points:
                await self._require("metering_points", "metering point", point)
            for community in grant.communities:
                await self._require("communities", "community", community)
            await self._insert_new("grants", "grant", grant.id, (grant.id, grant.label, expires, now))
            await self._db.executemany(
                "INSERT INTO grant_scopes VALUES (?, ?, ?)",
                [(grant.id, p, None) for p in grant.metering_points]
                + [(grant.id, None, c) for c in grant.communities])

        await self._transaction(work)
        return grant

    async def grant(self, ident: str) -> Grant | None:
        row = await self._one("SELECT id, label, expires FROM grants WHERE id = ?", (ident,))
        if row is None:
            return None
        scopes = await self._rows(
            "SELECT metering_point, community FROM grant_scopes WHERE grant_id = ? ORDER BY rowid",
            (ident,))
        return Grant(row[0], row[1], row[2], tuple(p for p, _ in scopes if p is not None),
                     tuple(c for _, c in scopes if c is not None))

    async def grants(self) -> list[Grant]:
        found = []
        for (ident,) in await self._rows("SELECT id FROM grants ORDER BY id"):
            grant = await self.grant(ident)
            assert grant is not None
            found.append(grant)
        return found

    # --------------------------------------------------------------------- keys

    async def create_key(self, kind: KeyKind, subject: str | None, label: str, expires: int | None,
                         now: int) -> tuple[ApiKey, str]:
        """A new key for ``subject`` (a utility, household or grant id; none for admin).
        Returns the key and its token: the token is shown once and never stored."""
        subject = _subject(kind, subject)
        check_name(label, "label")
        if expires is not None and check_time(expires, "expires") <= now:
            raise InvalidParty("a key must expire in the future (or never)", expires=expires)

        async def work() -> tuple[ApiKey, str]:
            await self._require_subject(kind, subject)
            return await self._insert_key(kind, subject, label, expires, None, now)

        return await self._transaction(work)

    async def rotate_key(self, key_id: str, grace: int | None, now: int) -> tuple[ApiKey, str]:
        """A new key for the same subject; the old one stays valid until revoked, or for
        ``grace`` more seconds if given (0 = it stops now)."""
        if grace is not None:
            check_time(grace, "grace")

        async def work() -> tuple[ApiKey, str]:
            old = await self._key(key_id)
            refusal = old.refusal(now)
            if refusal is not None:
                raise InvalidParty(f"{refusal}; only a valid key can be rotated", key=key_id)
            if grace is not None:
                until = now + grace if old.expires is None else min(old.expires, now + grace)
                await self._db.execute("UPDATE api_keys SET expires = ? WHERE id = ?", (until, key_id))
            return await self._insert_key(old.kind, old.subject, old.label, None, old.id, now)

        return await self._transaction(work)

    async def revoke_key(self, key_id: str, now: int) -> ApiKey:
        async def work() -> ApiKey:
            key = await self._key(key_id)
            if key.revoked is None:
                await self._db.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (now, key_id))
            return await self._key(key_id)

        return await self._transaction(work)

    async def key_for_token(self, token: str) -> ApiKey | None:
        row = await self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE token_hash = ?",
                              (token_hash(token),))
        return None if row is None else _key(row)

    async def keys(self) -> list[ApiKey]:
        return [_key(r) for r in await self._rows(
            f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, id")]

    async def touch_key(self, key_id: str, now: int) -> None:
        """Record use, at most once per :data:`LAST_USED_RESOLUTION` seconds per key."""
        await self._db.execute(
            "UPDATE api_keys SET last_used = ? WHERE id = ? AND (last_used IS NULL OR last_used <= ?)",
            (now, key_id, now - LAST_USED_RESOLUTION))

    async def _key(self, key_id: str) -> ApiKey:
        row = await self._one(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        if row is None:
            raise UnknownParty(f"no key {key_id}", key=key_id)
        return _key(row)

    async def _insert_key(self, kind: KeyKind, subject: str, label: str, expires: int | None,
                          replaces: str | None, now: int) -> tuple[ApiKey, str]:
        token, key_id = new_token(), new_key_id()
        await self._db.execute(
            "INSERT INTO api_keys (id, token_hash, kind, subject, label, created, expires, replaces) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key_id, token_hash(token), kind.value, subject, label, now, expires, replaces))
        return ApiKey(key_id, kind, subject, label, now, expires, None, None, replaces), token

    async def _require_subject(self, kind: KeyKind, subject: str) -> None:
        table = {KeyKind.UTILITY: ("utilities", "utility"), KeyKind.HOUSEHOLD: ("households", "household"),
                 KeyKind.AUDITOR: ("grants", "grant")}.get(kind)
        if table is not None:
            await self._require(*table, subject)

    # -------------------------------------------------------------- visibility

    async def visible_points(self, principal: Principal) -> list[MeteringPoint]:
        """The metering points ``principal`` sees at some time, by id."""
        rows = await self._rows(
            f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) "
            "SELECT DISTINCT m.id, m.utility, m.community, m.kind, m.created FROM metering_points m "
            "JOIN w ON w.mp = m.id ORDER BY m.id", _params(principal))
        return [_point(r) for r in rows]

    async def point_visible(self, principal: Principal, point: str) -> bool:
        return await self._one(
            f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) SELECT 1 FROM w WHERE mp = :point",
            {**_params(principal), "point": point}) is not None

    async def device_visible(self, principal: Principal, device: str) -> bool:
        """Whether a binding of ``device`` ever meets one of the principal's windows."""
        return await self._one(
            f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) SELECT 1 FROM meter_bindings b "
            "JOIN w ON w.mp = b.metering_point AND b.valid_from < w.wt "
            "AND w.wf < coalesce(b.valid_to, :open) WHERE b.device = :device LIMIT 1",
            {**_params(principal), "device": device}) is not None

    async def readings(self, principal: Principal, *, device: str | None = None,
                       point: str | None = None, start: int = 0, end: int = OPEN_END,
                       limit: int = 1000) -> list[tuple[ReadingRow, str]]:
        """Readings ``principal`` may see, of one device or one metering point, whose interval
        ends in [start, end), oldest first, each with its metering point."""
        if (device is None) == (point is None):
            raise ValueError("give exactly one of device and point")
        where = ("WHERE b.device = :device " if device is not None
                 else "WHERE b.metering_point = :point ")
        rows = await self._rows(
            _VISIBLE_READINGS.format(windows=_WINDOWS[principal.kind]) + where
            + 'AND r."end" >= :start AND r."end" < :end ORDER BY r."end", r.seq LIMIT :limit',
            {**_params(principal), "device": device, "point": point, "start": start, "end": end,
             "limit": limit})
        return [(reading_row(r), str(r[-1])) for r in rows]

    async def reading_point(self, principal: Principal, device: str, seq: int) -> str | None:
        """The metering point of reading (device, seq) if ``principal`` may see it, else None."""
        row = await self._one(
            _VISIBLE_READINGS.format(windows=_WINDOWS[principal.kind])
            + "WHERE r.device = :device AND r.seq = :seq",
            {**_params(principal), "device": device, "seq": seq})
        return None if row is None else str(row[-1])


_KEY_COLUMNS = "id, kind, subject, label, created, expires, revoked, last_used, replaces"


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(row[0], KeyKind(row[1]), *row[2:])


def _point(row: sqlite3.Row) -> MeteringPoint:
    return MeteringPoint(row[0], row[1], row[2], PointKind(row[3]), row[4])


def _params(principal: Principal) -> dict[str, object]:
    return {"subject": principal.id, "open": OPEN_END}


def _subject(kind: KeyKind, subject: str | None) -> str:
    if kind is KeyKind.ADMIN:
        if subject not in (None, "admin"):
            raise InvalidParty("an admin key has no subject", subject=subject)
        return "admin"
    if subject is None:
        subject_kind = kind.value if kind is not KeyKind.AUDITOR else "grant"
        raise InvalidParty(f"a {kind.value} key needs a subject: the {subject_kind} id", kind=kind.value)
    return check_id(subject, kind.value)


def _period(valid_from: int, valid_to: int | None) -> str:
    return f"[{valid_from}, {'open' if valid_to is None else valid_to})"
