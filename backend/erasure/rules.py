"""Erasure of a household's data (issue 7): its readings stay in the log as hashes, their data goes.

One call, :func:`erase_household`, used by the admin API, ``meterchain backend households erase``
and the household's own "My data" page. The store does the work in one transaction
(``erasure/tables.py``); this module adds what lives outside the database (the in-memory live
telemetry of the household's meters) and the wording every caller shows for an erased reading.
Device leaves (gateway keys) and settlement leaves are not household data and are never touched.
"""

from __future__ import annotations

import datetime as dt

from meterchain.backend.access.model import KeyKind, Principal, Scope
from meterchain.backend.access.tables import OPEN_END, PartyTables
from meterchain.backend.erasure.tables import ErasedReading, ErasureRecord, ErasureTables
from meterchain.backend.store import SqliteStore
from meterchain.backend.web.live import LiveTelemetry

__all__ = ["ErasedReading", "ErasureRecord", "erase_household", "erased_detail", "utc_day"]


def utc_day(ts: int) -> str:
    """A UTC date as YYYY-MM-DD (the erasure record's day, the same for every reader)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def erased_detail(erased: ErasedReading) -> str:
    """The sentence a caller asking for an erased reading gets (no value: there is none left)."""
    where = "" if erased.leaf_index is None else f" at leaf index {erased.leaf_index}"
    return (f"reading {erased.device}#{erased.seq} was erased on {utc_day(erased.erased_at)} "
            f"(erasure {erased.erasure}) at the household's request; its leaf hash stays in the "
            f"log{where}, its data is gone")


async def _household_meters(writer: SqliteStore, household: str) -> set[tuple[str, str]]:
    """(device, meter) of every meter bound to a point while the household occupied it."""
    tables = PartyTables(writer)
    who = Principal(KeyKind.HOUSEHOLD, household, frozenset({Scope.READ}))
    meters = set()
    for point in await tables.visible_points(who):
        held = [o for o in await tables.occupancies(point.id) if o.household == household]
        for b in await tables.meter_bindings(point.id):
            if any(b.valid_from < (o.valid_to or OPEN_END) and o.valid_from < (b.valid_to or OPEN_END)
                   for o in held):
                meters.add((b.device, b.meter))
    return meters


async def erase_household(writer: SqliteStore, household: str, requested_by: str, now: int,
                          live: LiveTelemetry | None = None) -> ErasureRecord | None:
    """Erase the household's data; the record, or None if nothing was left to erase.

    ``writer`` must be the connection writes go through (behind the API's write lock in a
    server). ``live``, if given, forgets the household's meters' latest unsigned samples.
    Raises ``UnknownParty`` for an unknown household.
    """
    meters = await _household_meters(writer, household) if live is not None else set()
    record = await ErasureTables(writer).erase(household, requested_by, now)
    if live is not None:
        live.forget(meters)
    return record
