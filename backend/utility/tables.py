"""The utility features' tables (migration 5): OCMF records and gateway health as the API reads
them (ingest writes them with the store's ``commit_side``), webhooks and their deliveries, and
the leaf-range query behind signed batches. Queries over one store's connection; every write is
one short IMMEDIATE transaction. Which readings a principal sees is decided by the same windows
as every other reading route (``backend/access/tables.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from meterchain.backend.access.model import Principal
from meterchain.backend.access.tables import _WINDOWS, OPEN_END, _params
from meterchain.backend.store.records import ReadingRow
from meterchain.backend.store.sqlite import (
    DEVICE_METERS,
    READING_COLUMNS,
    reading_row,
)
from meterchain.backend.store.tables import SqliteTables

# Sealed leaves in index order (CROSS JOIN keeps SQLite driving from the leaf_index range, so a
# page costs its own rows, not a scan), each reading joined to the metering point whose meter
# binding covers its end and to a window of the principal. Bindings of one meter never overlap,
# nor do a principal's windows on one point, so a reading matches at most once.
_VISIBLE = (
    "WITH w(mp, wf, wt) AS ({windows}) "
    f"SELECT {READING_COLUMNS}, b.metering_point FROM leaves l "
    "CROSS JOIN readings r ON r.leaf_id = l.id "
    "JOIN meter_bindings b ON b.device = r.device AND b.meter = r.meter "
    ' AND r."end" >= b.valid_from AND r."end" < coalesce(b.valid_to, :open) '
    'JOIN w ON w.mp = b.metering_point AND r."end" >= w.wf AND r."end" < w.wt '
)
# The admin also sees readings of meters bound to no metering point.
_ADMIN_RANGE = (
    f"SELECT {READING_COLUMNS}, (SELECT b.metering_point FROM meter_bindings b "
    "WHERE b.device = r.device AND b.meter = r.meter AND r.\"end\" >= b.valid_from "
    "AND r.\"end\" < coalesce(b.valid_to, :open)) FROM leaves l CROSS JOIN readings r "
    "ON r.leaf_id = l.id "
)


@dataclass(frozen=True, slots=True)
class OcmfRow:
    device: str
    seq: int
    meter: str
    end: int
    record: bytes
    metering_point: str | None


@dataclass(frozen=True, slots=True)
class GatewayRow:
    device: str
    last_seen: int | None
    sent: int | None
    firmware: str | None
    uptime: int | None
    outbox_depth: int | None
    quarantined: int | None


@dataclass(frozen=True, slots=True)
class MeterRow:
    device: str
    meter: str
    last_read: int | None
    drift: int | None


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    utility: str
    url: str
    secret: str
    after_batch: int  # batches with index >= this are announced
    created: int


DeliveryState = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    webhook: str
    idempotency_key: str
    event: str
    payload: bytes
    state: DeliveryState
    attempts: int
    next_attempt: int
    last_error: str
    created: int
    finished: int | None


_DELIVERY_COLUMNS = ("id, webhook, idempotency_key, event, payload, state, attempts, next_attempt, "
                     "last_error, created, finished")


class UtilityTables(SqliteTables):
    async def _begin(self) -> None:
        await self._db.execute("BEGIN IMMEDIATE")

    # ------------------------------------------------- OCMF and gateway status (the API)

    async def ocmf_records(self, principal: Principal, *, device: str | None = None,
                           point: str | None = None, start: int = 0, end: int = OPEN_END,
                           limit: int = 1000) -> list[OcmfRow]:
        """OCMF records ``principal`` may see (same windows as readings), of one device or one
        metering point, whose time is in [start, end), oldest first."""
        if (device is None) == (point is None):
            raise ValueError("give exactly one of device and point")
        params = {**_params(principal), "device": device, "point": point, "start": start,
                  "end": end, "limit": limit}
        binding = ('LEFT JOIN meter_bindings b ON b.device = o.device AND b.meter = o.meter '
                   'AND o."end" >= b.valid_from AND o."end" < coalesce(b.valid_to, :open) ')
        if principal.is_admin:
            sql = ('SELECT o.device, o.seq, o.meter, o."end", o.record, b.metering_point '
                   f"FROM ocmf_records o {binding}")
        else:
            sql = (f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) "
                   'SELECT DISTINCT o.device, o.seq, o.meter, o."end", o.record, b.metering_point '
                   f"FROM ocmf_records o {binding}"
                   'JOIN w ON w.mp = b.metering_point AND o."end" >= w.wf AND o."end" < w.wt ')
        where = "WHERE o.device = :device " if device is not None else "WHERE b.metering_point = :point "
        rows = await self._rows(sql + where + 'AND o."end" >= :start AND o."end" < :end '
                                'ORDER BY o."end", o.device, o.seq LIMIT :limit', params)
        return [OcmfRow(r[0], r[1], r[2], r[3], bytes(r[4]), r[5]) for r in rows]

    # ------------------------------------------------------------------ signed batches

    async def readings_in_leaf_range(self, principal: Principal, after: int, upto: int,
                                     limit: int) -> list[tuple[ReadingRow, str | None]]:
        """Readings ``principal`` may see whose leaf index is in (after, upto), by leaf index:
        a page of a signed batch (leaf indices never change once sealed, so a cursor is stable)."""
        params = {**_params(principal), "after": after, "upto": upto, "limit": limit}
        range_sql = "l.leaf_index > :after AND l.leaf_index < :upto ORDER BY l.leaf_index LIMIT :limit"
        if principal.is_admin:
            rows = await self._rows(_ADMIN_RANGE + "WHERE " + range_sql, params)
        else:
            rows = await self._rows(_VISIBLE.format(windows=_WINDOWS[principal.kind])
                                    + "WHERE " + range_sql, params)
        return [(reading_row(r), r[-1]) for r in rows]

    # -------------------------------------------------------------------- fleet health

    async def gateways(self, principal: Principal) -> list[GatewayRow]:
        """Every enrolled gateway ``principal`` may see (one bound to its metering points), with
        its newest status (None fields: it never sent one)."""
        columns = ("d.device, s.last_seen, s.sent, s.firmware, s.uptime, s.outbox_depth, "
                   "s.quarantined FROM devices d LEFT JOIN gateway_status s ON s.device = d.device ")
        if principal.is_admin:
            rows = await self._rows(f"SELECT {columns} ORDER BY d.device")
        else:
            rows = await self._rows(
                f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) SELECT DISTINCT {columns}"
                "JOIN meter_bindings b ON b.device = d.device JOIN w ON w.mp = b.metering_point "
                "AND b.valid_from < w.wt AND w.wf < coalesce(b.valid_to, :open) ORDER BY d.device",
                _params(principal))
        return [GatewayRow(*r) for r in rows]

    async def visible_meters(self, principal: Principal, device: str) -> set[str] | None:
        """The meters of ``device`` bound to the principal's metering points (None: all, admin).
        A gateway may read meters of several utilities: each sees only its own."""
        if principal.is_admin:
            return None
        rows = await self._rows(
            f"WITH w(mp, wf, wt) AS ({_WINDOWS[principal.kind]}) SELECT DISTINCT b.meter "
            "FROM meter_bindings b JOIN w ON w.mp = b.metering_point AND b.valid_from < w.wt "
            "AND w.wf < coalesce(b.valid_to, :open) WHERE b.device = :device",
            {**_params(principal), "device": device})
        return {str(r[0]) for r in rows}

    async def gateway_meters(self, device: str) -> list[MeterRow]:
        rows = await self._rows("SELECT device, meter, last_read, drift FROM gateway_meters "
                                "WHERE device = ? ORDER BY meter", (device,))
        return [MeterRow(*r) for r in rows]

    async def stored_meters(self, device: str) -> dict[str, int]:
        """Per meter of ``device``: the interval end of its newest stored reading."""
        rows = await self._rows('SELECT meter, max("end") FROM readings WHERE device = ? '
                                "GROUP BY meter", (device,))
        return {str(r[0]): int(r[1]) for r in rows}

    async def gaps(self, device: str, since: int, limit: int = 100) -> list[tuple[str, int, int]]:
        """Holes in each meter's stored readings of ``device`` ending after ``since``:
        (meter, from, to) where no reading covers [from, to), oldest first."""
        rows = await self._rows(
            f"WITH RECURSIVE {DEVICE_METERS} "
            'SELECT meter, prev_end, start FROM (SELECT r.meter, r.start, r."end", '
            'lag(r."end") OVER (PARTITION BY r.meter ORDER BY r."end") AS prev_end FROM dm CROSS '
            'JOIN readings r ON r.device = :device AND r.meter = dm.meter AND r."end" >= :since) '
            "WHERE prev_end IS NOT NULL AND start > prev_end ORDER BY prev_end LIMIT :limit",
            {"device": device, "since": since, "limit": limit})
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    # ------------------------------------------------------------------------ webhooks

    async def add_webhook(self, hook: Webhook) -> None:
        await self._begin()
        try:
            await self._db.execute(
                "INSERT INTO webhooks (id, utility, url, secret, after_batch, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (hook.id, hook.utility, hook.url, hook.secret, hook.after_batch, hook.created))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise

    async def webhooks(self, utility: str | None = None) -> list[Webhook]:
        sql = ("SELECT id, utility, url, secret, after_batch, created FROM webhooks "
               "WHERE deleted IS NULL")
        rows = await self._rows(sql + (" AND utility = ?" if utility else "") + " ORDER BY id",
                                (utility,) if utility else ())
        return [Webhook(*r) for r in rows]

    async def webhook(self, ident: str) -> Webhook | None:
        hooks = [h for h in await self.webhooks() if h.id == ident]
        return hooks[0] if hooks else None

    async def delete_webhook(self, ident: str, now: int) -> None:
        await self._db.execute("UPDATE webhooks SET deleted = ? WHERE id = ?", (now, ident))

    async def enqueue(self, hook: Webhook, deliveries: Sequence[tuple[str, str, bytes]],
                      next_batch: int, now: int) -> int:
        """Queue ``(idempotency key, event, payload)`` deliveries and move the webhook's
        ``after_batch`` to ``next_batch``, in one transaction; a key already queued is kept."""
        await self._begin()
        try:
            added = 0
            for key, event, payload in deliveries:
                cur = await self._db.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries (webhook, idempotency_key, event, "
                    "payload, state, attempts, next_attempt, last_error, created) "
                    "VALUES (?, ?, ?, ?, 'pending', 0, ?, '', ?)",
                    (hook.id, key, event, payload, now, now))
                added += cur.rowcount
                await cur.close()
            await self._db.execute("UPDATE webhooks SET after_batch = ? WHERE id = ?",
                                   (next_batch, hook.id))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        return added

    async def due(self, now: int, limit: int) -> list[Delivery]:
        rows = await self._rows(
            f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'pending' "
            "AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?", (now, limit))
        return [Delivery(*r) for r in rows]

    async def next_due(self) -> int | None:
        rows = await self._rows("SELECT min(next_attempt) FROM webhook_deliveries "
                                "WHERE state = 'pending'")
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    async def record_attempt(self, delivery: int, *, state: str, attempts: int,
                             next_attempt: int, error: str, now: int) -> None:
        finished = now if state != "pending" else None
        await self._db.execute(
            "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt = ?, "
            "last_error = ?, finished = ? WHERE id = ?",
            (state, attempts, next_attempt, error[:500], finished, delivery))

    async def deliveries(self, webhook: str, state: str | None, after: int,
                         limit: int) -> list[Delivery]:
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook = ? AND id > ?"
        params: list[object] = [webhook, after]
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        rows = await self._rows(sql + " ORDER BY id LIMIT ?", [*params, limit])
        return [Delivery(*r) for r in rows]

    async def replay(self, webhook: str, delivery: int, now: int) -> bool:
        """Put a dead delivery back in the queue (attempts start again); False if none such."""
        cur = await self._db.execute(
            "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt = ?, "
            "finished = NULL WHERE id = ? AND webhook = ? AND state = 'dead'",
            (now, delivery, webhook))
        changed = cur.rowcount
        await cur.close()
        return changed == 1

    async def readings_count_in_range(self, principal: Principal, after: int, upto: int) -> int:
        """How many readings ``principal`` sees with leaf index in (after, upto)."""
        params = {**_params(principal), "after": after, "upto": upto}
        where = "WHERE l.leaf_index > :after AND l.leaf_index < :upto"
        if principal.is_admin:
            sql = f"SELECT count(*) FROM leaves l CROSS JOIN readings r ON r.leaf_id = l.id {where}"
        else:
            sql = f"SELECT count(*) FROM ({_VISIBLE.format(windows=_WINDOWS[principal.kind])}{where})"
        rows = await self._rows(sql, params)
        return int(rows[0][0])
