"""Erasure of a household's data in the store (tables of migration 8), in ONE transaction.

What goes: for every reading the household may see (its metering points within its occupancies,
the same windows as ``PartyTables.readings``), the ``readings`` row (its values), the leaf's
data (the signed message, packed or not; the column becomes empty), the OCMF record and any
conflicting message kept as evidence; the household's logins, sessions and one-time links; its
API keys are revoked.
What stays: every leaf hash and leaf index (so the tree, tiles, checkpoints and batch chain are
untouched), and per erased reading its place ``(device, seq, meter, end, leaf)`` in
``erased_readings``, so a bundle request can say "erased" and ingest never stores it again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from meterchain.backend.access.model import KeyKind, Principal, UnknownParty, check_id
from meterchain.backend.access.tables import _WINDOWS, OPEN_END
from meterchain.backend.store.tables import SqliteTables

#: (first, last) leaf index ranges, both inclusive.
Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """What an erasure did: who asked, when, how many leaves lost their data and where they sit
    in the log. Never any value."""

    id: int
    household: str
    requested_by: str
    time: int
    leaves: int
    ranges: Ranges  # sealed leaf indices at the time of the erasure
    unsealed: int  # erased leaves not sealed yet then (their hashes are sealed later as usual)
    logins: int

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "household": self.household, "requested_by": self.requested_by,
                "time": self.time, "leaves": self.leaves,
                "ranges": [list(r) for r in self.ranges], "unsealed": self.unsealed,
                "logins": self.logins}


@dataclass(frozen=True, slots=True)
class ErasedReading:
    device: str
    seq: int
    meter: str
    end: int
    leaf_index: int | None
    erasure: int
    erased_at: int
    metering_point: str


def leaf_ranges(indices: Sequence[int]) -> Ranges:
    """Sorted leaf indices as maximal runs of consecutive indices, (first, last) inclusive."""
    out: list[tuple[int, int]] = []
    for index in sorted(set(indices)):
        if out and out[-1][1] + 1 == index:
            out[-1] = (out[-1][0], index)
        else:
            out.append((index, index))
    return tuple(out)


_RECORD_COLUMNS = "id, household, requested_by, time, leaves, ranges, unsealed, logins"
# The erased readings a principal may see: the same joins as PartyTables' visibility query.
_VISIBLE_ERASED = (
    "WITH w(mp, wf, wt) AS ({windows}) "
    'SELECT DISTINCT e.device, e.seq, e.meter, e."end", l.leaf_index, e.erasure, x.time, '
    "b.metering_point FROM erased_readings e JOIN leaves l ON l.id = e.leaf_id "
    "JOIN erasures x ON x.id = e.erasure "
    "JOIN meter_bindings b ON b.device = e.device AND b.meter = e.meter "
    ' AND e."end" >= b.valid_from AND e."end" < coalesce(b.valid_to, :open) '
    'JOIN w ON w.mp = b.metering_point AND e."end" >= w.wf AND e."end" < w.wt '
)
_ADMIN_WINDOWS = "SELECT id, 0, :open FROM metering_points"


def _record(row: sqlite3.Row) -> ErasureRecord:
    ranges = tuple((int(a), int(b)) for a, b in json.loads(row[5]))
    return ErasureRecord(row[0], row[1], row[2], row[3], row[4], ranges, row[6], row[7])


class ErasureTables(SqliteTables):
    """Erasure queries over one store's connection (use the writer's for :meth:`erase`)."""

    async def erase(self, household: str, requested_by: str, now: int) -> ErasureRecord | None:
        """Erase the household's data now; None if there was nothing left to erase (erasing
        twice changes nothing and records nothing the second time)."""
        check_id(household, "household")
        return await self._transaction(lambda: self._erase(household, requested_by[:200], now))

    async def _erase(self, household: str, requested_by: str, now: int) -> ErasureRecord | None:
        if not await self._rows("SELECT 1 FROM households WHERE id = ?", (household,)):
            raise UnknownParty(f"no household {household}", id=household)
        # The openings of its occupancies name it (docs/privacy.md): emptied, the leaves stay and
        # can never be opened again.
        await self._db.execute(
            "UPDATE assignment_openings SET salt = X'', fields = X'' WHERE kind = 'occupancy' "
            "AND binding IN (SELECT id FROM occupancies WHERE household = ?)", (household,))
        targets = await self._targets(household)
        logins = [r[0] for r in await self._rows(
            "SELECT username FROM web_logins WHERE household = ?", (household,))]
        live_keys = await self._rows(
            "SELECT count(*) FROM api_keys WHERE kind = 'household' AND subject = ? "
            "AND (revoked IS NULL OR revoked > ?)", (household, now))
        links = await self._rows("SELECT count(*) FROM web_links WHERE household = ?", (household,))
        if not targets and not logins and not live_keys[0][0] and not links[0][0]:
            return None
        sealed = [r[5] for r in targets if r[5] is not None]
        ranges = leaf_ranges(sealed)
        cur = await self._db.execute(
            f"INSERT INTO erasures ({_RECORD_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)",
            (household, requested_by, now, len(targets), json.dumps([list(r) for r in ranges]),
             len(targets) - len(sealed), len(logins)))
        erasure = int(cur.lastrowid or 0)
        await self._db.executemany(
            'INSERT INTO erased_readings (device, seq, meter, "end", leaf_id, erasure) '
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r[0], r[1], r[2], r[3], r[4], erasure) for r in targets])
        keyed = [(r[0], r[1]) for r in targets]
        await self._db.executemany("DELETE FROM readings WHERE device = ? AND seq = ?", keyed)
        await self._db.executemany("DELETE FROM ocmf_records WHERE device = ? AND seq = ?", keyed)
        await self._db.executemany("DELETE FROM conflicts WHERE device = ? AND seq = ?", keyed)
        await self._db.executemany("DELETE FROM conflicts WHERE kept_leaf_id = ?",
                                   [(r[4],) for r in targets])
        # The leaf keeps kind, hash and index; only its data (the signed message) goes.
        await self._db.executemany("UPDATE leaves SET data = X'' WHERE id = ? AND kind = 'reading'",
                                   [(r[4],) for r in targets])
        await self._db.executemany("DELETE FROM web_sessions WHERE username = ?",
                                   [(u,) for u in logins])
        await self._db.execute("DELETE FROM web_logins WHERE household = ?", (household,))
        await self._db.execute("DELETE FROM web_links WHERE household = ?", (household,))
        # its display name and the ratings it gave or got (its comments, opinions about it);
        # its wallet postings stay, like its bills: accounting records (docs/privacy.md)
        await self._db.execute("DELETE FROM market_profiles WHERE household = ?", (household,))
        await self._db.execute("DELETE FROM market_ratings WHERE rater = ? OR rated = ?",
                               (household, household))
        await self._db.execute(
            "UPDATE api_keys SET revoked = ? WHERE kind = 'household' AND subject = ? "
            "AND (revoked IS NULL OR revoked > ?)", (now, household, now))
        return ErasureRecord(erasure, household, requested_by, now, len(targets), ranges,
                             len(targets) - len(sealed), len(logins))

    async def _targets(self, household: str) -> list[sqlite3.Row]:
        """(device, seq, meter, end, leaf id, leaf index) of the household's stored readings."""
        return await self._rows(
            f"WITH w(mp, wf, wt) AS ({_WINDOWS[KeyKind.HOUSEHOLD]}) "
            'SELECT DISTINCT r.device, r.seq, r.meter, r."end", r.leaf_id, l.leaf_index '
            "FROM readings r JOIN leaves l ON l.id = r.leaf_id "
            "JOIN meter_bindings b ON b.device = r.device AND b.meter = r.meter "
            ' AND r."end" >= b.valid_from AND r."end" < coalesce(b.valid_to, :open) '
            'JOIN w ON w.mp = b.metering_point AND r."end" >= w.wf AND r."end" < w.wt '
            "ORDER BY r.leaf_id", {"subject": household, "open": OPEN_END})

    async def erasable(self, household: str) -> int:
        """How many stored readings an erasure of ``household`` would erase now."""
        return len(await self._targets(household))

    async def erasures(self, household: str | None = None) -> list[ErasureRecord]:
        """Erasure records, oldest first (all, or one household's)."""
        if household is None:
            rows = await self._rows(f"SELECT {_RECORD_COLUMNS} FROM erasures ORDER BY id")
        else:
            rows = await self._rows(f"SELECT {_RECORD_COLUMNS} FROM erasures WHERE household = ? "
                                    "ORDER BY id", (household,))
        return [_record(r) for r in rows]

    async def erased_reading(self, principal: Principal, device: str, seq: int
                             ) -> ErasedReading | None:
        """The erased reading (device, seq) if ``principal`` could have seen it, else None.
        The admin sees every erased reading, bound to a metering point or not."""
        if principal.is_admin:
            rows = await self._rows(
                'SELECT e.device, e.seq, e.meter, e."end", l.leaf_index, e.erasure, x.time, '
                "coalesce((SELECT b.metering_point FROM meter_bindings b WHERE b.device = e.device "
                'AND b.meter = e.meter AND e."end" >= b.valid_from AND e."end" < '
                "coalesce(b.valid_to, :open)), '') FROM erased_readings e "
                "JOIN leaves l ON l.id = e.leaf_id JOIN erasures x ON x.id = e.erasure "
                "WHERE e.device = :device AND e.seq = :seq",
                {"open": OPEN_END, "device": device, "seq": seq})
        else:
            rows = await self._rows(
                _VISIBLE_ERASED.format(windows=_WINDOWS[principal.kind])
                + "WHERE e.device = :device AND e.seq = :seq",
                {"subject": principal.id, "open": OPEN_END, "device": device, "seq": seq})
        return ErasedReading(*rows[0]) if rows else None

    async def erased_in(self, principal: Principal, point: str, start: int, end: int
                        ) -> list[ErasedReading]:
        """Erased readings of ``point`` visible to ``principal`` whose interval ends in
        [start, end), oldest first."""
        windows = _ADMIN_WINDOWS if principal.is_admin else _WINDOWS[principal.kind]
        rows = await self._rows(
            _VISIBLE_ERASED.format(windows=windows)
            + 'WHERE b.metering_point = :point AND e."end" >= :start AND e."end" < :end '
            'ORDER BY e."end"',
            {"subject": principal.id, "open": OPEN_END, "point": point, "start": start,
             "end": end})
        return [ErasedReading(*r) for r in rows]

    async def erased_leaf_count(self) -> int:
        rows = await self._rows("SELECT count(*) FROM erased_readings")
        return int(rows[0][0])
