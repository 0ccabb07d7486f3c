"""Meter bindings and occupancies logged as salted assignment leaves (issue 17, contract/assignment.py,
docs/format.md §5.1), and their openings kept for the parties entitled to see them.

Every change of a binding is logged in the same transaction as the change itself (``PartyTables``
calls :func:`log_assignment`): a new binding or occupancy logs its period, ending one logs it
again with its end. :meth:`AssignmentTables.backfill` logs what is not logged yet (bindings made
before migration 15, or written around ``PartyTables``); it runs when the sealer starts and is
idempotent: a binding whose latest leaf states its current end is left alone.

The salt and the fields (the *opening*) stay in ``assignment_openings``; a utility batch carries
the openings of the bindings its readings count under (backend/utility/batches.py), so nobody else
can confirm a guessed binding against the public leaf hashes (docs/privacy.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiosqlite
from meterchain.backend.access.model import MeterBinding, Occupancy
from meterchain.backend.store.leafdata import pack_leaf_data
from meterchain.backend.store.tables import SqliteTables
from meterchain.contract.assignment import Assignment, AssignmentKind, AssignmentOpening
from meterchain.contract.errors import MeterchainError
from meterchain.contract.humantime import human_time
from meterchain.contract.merkle import leaf_hash

log = logging.getLogger("meterchain.backend.assignments")
#: (kind, table, its columns up to valid_from, the record) of what assignment leaves log.
_TABLES: tuple[tuple[str, str, str, type[MeterBinding] | type[Occupancy]], ...] = (
    ("meter", "meter_bindings", "b.id, b.metering_point, b.device, b.meter", MeterBinding),
    ("occupancy", "occupancies", "b.id, b.metering_point, b.household", Occupancy),
)


def binding_assignment(binding: MeterBinding | Occupancy, now: int) -> Assignment:
    """The fields a binding's leaf commits to, as known at ``now``."""
    if isinstance(binding, MeterBinding):
        return Assignment(AssignmentKind.METER, binding.metering_point, binding.valid_from,
                          binding.valid_to, now, device=binding.device, meter=binding.meter)
    return Assignment(AssignmentKind.OCCUPANCY, binding.metering_point, binding.valid_from,
                      binding.valid_to, now, household=binding.household)


async def log_assignment(db: aiosqlite.Connection, binding: MeterBinding | Occupancy,
                         now: int) -> int:
    """Append the binding's assignment leaf and keep its opening; returns the leaf id. Runs inside
    the caller's transaction (the one that changes the binding)."""
    assignment = binding_assignment(binding, now)
    opening = AssignmentOpening.new(assignment)
    data = opening.leaf
    cur = await db.execute(
        "INSERT INTO leaves (kind, data, leaf_hash, received_at) VALUES ('assignment', ?, ?, ?)",
        (pack_leaf_data(data), leaf_hash(data), now))
    leaf_id = int(cur.lastrowid or 0)
    await db.execute(
        "INSERT INTO assignment_openings (leaf_id, kind, binding, metering_point, valid_to, salt, "
        "fields) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (leaf_id, assignment.kind.value, binding.id, binding.metering_point, binding.valid_to,
         opening.salt, opening.fields))
    return leaf_id


@dataclass(frozen=True, slots=True)
class LoggedOpening:
    """An opening as stored, with its leaf's index once sealed."""

    leaf_index: int | None
    opening: AssignmentOpening

    @property
    def assignment(self) -> Assignment:
        return self.opening.assignment


class AssignmentTables(SqliteTables):
    """The openings of assignment leaves over one store's connection."""

    async def backfill(self, now: int) -> int:
        """Log every binding and occupancy whose latest leaf does not state its current period;
        returns how many leaves were appended (0 when everything is logged)."""

        async def work() -> int:
            appended = 0
            for kind, table, columns, build in _TABLES:
                rows = await self._rows(
                    f"SELECT {columns}, b.valid_from, b.valid_to, "
                    "(SELECT o.leaf_id FROM assignment_openings o WHERE o.kind = ? "
                    " AND o.binding = b.id ORDER BY o.leaf_id DESC LIMIT 1) AS latest, "
                    "(SELECT o.valid_to FROM assignment_openings o WHERE o.kind = ? "
                    " AND o.binding = b.id ORDER BY o.leaf_id DESC LIMIT 1) "
                    f"FROM {table} b ORDER BY b.id", (kind, kind))
                for row in rows:
                    *values, latest, logged_to = row
                    binding = build(*values)
                    if latest is None or logged_to != binding.valid_to:
                        await log_assignment(self._db, binding, now)
                        appended += 1
            return appended

        appended = await self._transaction(work)
        if appended:
            log.info("assignments: logged %d binding(s) not logged before", appended)
        return appended

    async def audit(self) -> list[tuple[str, str]]:
        """``(name, problem)`` for every opening that does not open its leaf, every binding or
        occupancy whose latest logged state is not the table's, every assignment leaf without an
        opening, and every meter or point the logged bindings put in two places at once."""
        problems: list[tuple[str, str]] = []
        latest: dict[tuple[str, int], Assignment] = {}
        states: dict[tuple[str, ...], Assignment] = {}
        erased: set[tuple[str, int]] = set()  # occupancies whose openings an erasure emptied
        # One scan of the leaves' kinds (no index: the audit reads every leaf anyway), then the
        # openings by their leaves' primary keys.
        problems += [(f"leaf #{r[0]}", "an assignment leaf without its opening") for r in await self._rows(
            "SELECT id FROM leaves WHERE kind = 'assignment' "
            "AND id NOT IN (SELECT leaf_id FROM assignment_openings) ORDER BY id")]
        rows = await self._rows(
            "SELECT l.id, l.kind, l.leaf_hash, o.kind, o.binding, o.valid_to, o.salt, o.fields "
            "FROM assignment_openings o JOIN leaves l ON l.id = o.leaf_id ORDER BY o.leaf_id")
        for leaf_id, leaf_kind, hashed, kind, binding, valid_to, salt, fields in rows:
            name = f"leaf #{leaf_id}"
            if not salt:  # erased (an occupancy of an erased household): nothing to open
                erased.add((kind, binding))
                continue
            try:
                opening = AssignmentOpening(bytes(salt), bytes(fields))
                assignment = opening.assignment
                if leaf_kind != "assignment" or leaf_hash(opening.leaf) != bytes(hashed):
                    raise MeterchainError("the opening does not open the leaf")
                if (assignment.kind.value, assignment.valid_to) != (kind, valid_to):
                    raise MeterchainError("the opening's fields differ from its row")
            except MeterchainError as exc:
                problems.append((name, str(exc)))
                continue
            latest[(kind, binding)] = assignment
            states[assignment.binding] = assignment
        for kind, table, columns, build in _TABLES:
            for row in await self._rows(f"SELECT {columns}, b.valid_from, b.valid_to FROM {table} b"):
                current = binding_assignment(build(*row), 0)
                logged = latest.get((kind, row[0]))
                if logged is None and (kind, row[0]) in erased:
                    continue  # logged, then emptied by the household's erasure: nothing left to compare
                if logged is None or (logged.binding, logged.valid_to) != (current.binding, current.valid_to):
                    problems.append((f"{kind} binding {row[0]}", "the table's binding is not as "
                                     "logged (log it: the backfill runs when the sealer starts)"))
        meters: dict[tuple[str, ...], list[Assignment]] = {}
        points: dict[tuple[str, ...], list[Assignment]] = {}
        for a in states.values():
            if a.kind is AssignmentKind.METER:
                meters.setdefault((a.device or "", a.meter or ""), []).append(a)
                points.setdefault((a.point,), []).append(a)
        return problems + _overlaps(meters, "meter binding") + _overlaps(points, "meter binding")

    async def meter_openings(self, points: Iterable[str], below: int) -> list[LoggedOpening]:
        """The openings of the meter bindings of ``points`` whose leaves are sealed below leaf
        index ``below``, in log order. Openings emptied by an erasure are left out."""
        wanted = sorted(set(points))
        if not wanted:
            return []
        marks = ", ".join("?" for _ in wanted)
        rows = await self._rows(
            "SELECT l.leaf_index, o.salt, o.fields FROM assignment_openings o "
            "JOIN leaves l ON l.id = o.leaf_id "
            f"WHERE o.kind = 'meter' AND o.metering_point IN ({marks}) "
            "AND l.leaf_index IS NOT NULL AND l.leaf_index < ? AND length(o.salt) > 0 "
            "ORDER BY l.leaf_index", (*wanted, below))
        return [LoggedOpening(r[0], AssignmentOpening(bytes(r[1]), bytes(r[2]))) for r in rows]

    async def openings(self, kind: AssignmentKind, binding: int) -> list[LoggedOpening]:
        """Every opening of one binding or occupancy, in log order (leaf index None: unsealed;
        openings emptied by an erasure are left out)."""
        rows = await self._rows(
            "SELECT l.leaf_index, o.salt, o.fields FROM assignment_openings o "
            "JOIN leaves l ON l.id = o.leaf_id WHERE o.kind = ? AND o.binding = ? "
            "AND length(o.salt) > 0 ORDER BY o.leaf_id", (kind.value, binding))
        return [LoggedOpening(r[0], AssignmentOpening(bytes(r[1]), bytes(r[2]))) for r in rows]


def _overlaps(groups: dict[tuple[str, ...], list[Assignment]], what: str) -> list[tuple[str, str]]:
    problems = []
    for key, items in groups.items():
        items.sort(key=lambda a: a.valid_from)
        for before, after in zip(items, items[1:], strict=False):
            if before.valid_to is None or before.valid_to > after.valid_from:
                problems.append(("/".join(key), f"the logged {what}s overlap: {before.point} from "
                                 f"{human_time(before.valid_from)} and {after.point} from "
                                 f"{human_time(after.valid_from)}"))
    return problems


def covering(openings: Sequence[LoggedOpening],
             readings: Iterable[tuple[str, str, str, int]]) -> list[LoggedOpening]:
    """The openings of the bindings under which the ``(point, device, meter, end)`` readings
    count (every leaf of such a binding: the latest decides its end), in log order. What a
    verifier needs to check ``point-assigned``, and no other binding of the points."""
    by_binding: dict[tuple[str, ...], list[tuple[LoggedOpening, Assignment]]] = {}
    for item in openings:
        assignment = item.assignment
        by_binding.setdefault(assignment.binding, []).append((item, assignment))
    ends: dict[tuple[str, str | None, str | None], list[int]] = {}
    for point, device, meter, end in readings:
        ends.setdefault((point, device, meter), []).append(end)
    keep: list[LoggedOpening] = []
    for leaves in by_binding.values():
        latest = leaves[-1][1]
        if any(latest.covers(end) for end in ends.get((latest.point, latest.device, latest.meter), ())):
            keep.extend(item for item, _ in leaves)
    return sorted(keep, key=lambda o: o.leaf_index or 0)
