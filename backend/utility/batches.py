"""Signed batches for utilities: the readings a principal may see between two checkpoints, each
with its inclusion proof, the consistency proof between the checkpoints, both signed checkpoints
and the device leaves that prove the signing keys (docs/utility-guide.md, with CDDL).

The range is the leaves checkpoint B adds to checkpoint A: leaf indices ``from <= i < to`` where
``from``/``to`` are the two tree sizes. Pages follow leaf order with ``cursor`` = the first leaf
index to return and ``next`` = where the following page starts; sealed leaf indices never change
and everything a later seal adds has an index >= ``to``, so paging through a fixed (from, to)
neither misses nor repeats a reading however much arrives meanwhile. The same document is served
as JSON (bytes in base64) and as deterministic CBOR (bytes as byte strings).

Version 2 (issue 17) adds ``assignments``: the openings (salt, fields, leaf index, inclusion proof
to checkpoint `new`) of the meter bindings the page's readings count under, so a verifier proves
each entry's ``point`` (check ``point-assigned``). Only the bindings of the page's own entries are
opened: a page reveals no binding its principal has no reading of.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from meterchain.backend.access.assignments import AssignmentTables, covering
from meterchain.backend.access.model import Principal
from meterchain.backend.log.proofs import consistency_proof, inclusion_proof
from meterchain.backend.store import SqliteStore
from meterchain.backend.utility.tables import UtilityTables
from meterchain.contract import cbor
from meterchain.contract.errors import MeterchainError
from meterchain.contract.utility_batch import BATCH_TYPE

MAX_PAGE = 1000


class BatchUnavailable(MeterchainError):
    """The asked-for checkpoints or cursor do not exist (``bad-range``)."""

    check = "bad-range"


@dataclass(frozen=True, slots=True)
class BatchEntry:
    index: int
    device: str
    seq: int
    point: str | None
    message: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class KeyEntry:
    index: int
    leaf: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AssignmentEntry:
    index: int
    salt: bytes
    fields: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class UtilityBatch:
    size_from: int
    size_to: int
    old: str | None  # checkpoint note at size_from; None when size_from = 0
    new: str
    consistency: tuple[bytes, ...]
    entries: tuple[BatchEntry, ...]
    keys: tuple[KeyEntry, ...]
    assignments: tuple[AssignmentEntry, ...]
    cursor: int
    next: int | None

    def to_obj(self, encode_bytes: Any = bytes) -> dict[str, Any]:
        b = encode_bytes
        return {
            "t": BATCH_TYPE,
            "from": self.size_from,
            "to": self.size_to,
            "old": self.old,
            "new": self.new,
            "consistency": [b(h) for h in self.consistency],
            "entries": [
                {"index": e.index, "device": e.device, "seq": e.seq, "point": e.point,
                 "message": b(e.message), "proof": [b(h) for h in e.proof]}
                for e in self.entries
            ],
            "keys": [{"index": k.index, "leaf": b(k.leaf), "proof": [b(h) for h in k.proof]}
                     for k in self.keys],
            "assignments": [{"index": a.index, "salt": b(a.salt), "fields": b(a.fields),
                             "proof": [b(h) for h in a.proof]} for a in self.assignments],
            "cursor": self.cursor,
            "next": self.next,
        }

    def to_json_obj(self) -> dict[str, Any]:
        return self.to_obj(lambda data: base64.b64encode(data).decode())

    def to_cbor(self) -> bytes:
        return cbor.encode(self.to_obj())


async def build_batch(store: SqliteStore, principal: Principal, *, size_from: int,
                      size_to: int | None, cursor: int | None, limit: int) -> UtilityBatch:
    """One page of the signed batch between the checkpoints of sizes ``size_from`` and
    ``size_to`` (default: the newest), from leaf index ``cursor`` (default ``size_from``)."""
    newest = await store.latest_checkpoint()
    if newest is None:
        raise BatchUnavailable("nothing has been sealed yet", check="no-checkpoint")
    to = newest.size if size_to is None else size_to
    new = await store.checkpoint(to)
    if new is None:
        raise BatchUnavailable(f"there is no checkpoint of size {to}", size=to)
    old = None
    if size_from:
        old_row = await store.checkpoint(size_from)
        if old_row is None:
            raise BatchUnavailable(f"there is no checkpoint of size {size_from}", size=size_from)
        old = old_row.note
    if size_from > to:
        raise BatchUnavailable(f"from ({size_from}) is after to ({to})", size=size_from)
    start = size_from if cursor is None else cursor
    if not size_from <= start <= to:
        raise BatchUnavailable(f"cursor {start} is outside [{size_from}, {to}]", cursor=start)
    limit = max(1, min(limit, MAX_PAGE))
    rows = await UtilityTables(store).readings_in_leaf_range(principal, start - 1, to, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    entries = []
    for row, point in rows:
        assert row.leaf_index is not None
        proof = await inclusion_proof(store, row.leaf_index, to)
        entries.append(BatchEntry(row.leaf_index, row.device, row.seq, point, row.message,
                                  tuple(proof)))
    counted = [(point, row.device, row.meter, row.end) for row, point in rows if point is not None]
    opened = covering(await AssignmentTables(store).meter_openings({c[0] for c in counted}, to),
                      counted)
    assignments = []
    for item in opened:
        assert item.leaf_index is not None
        assignments.append(AssignmentEntry(item.leaf_index, item.opening.salt, item.opening.fields,
                                           tuple(await inclusion_proof(store, item.leaf_index, to))))
    keys = []
    for device in sorted({e.device for e in entries}):
        for leaf in await store.device_leaves(device):
            if leaf.leaf_index is not None and leaf.leaf_index < to:
                keys.append(KeyEntry(leaf.leaf_index, leaf.data,
                                     tuple(await inclusion_proof(store, leaf.leaf_index, to))))
    consistency: tuple[bytes, ...] = ()
    if 0 < size_from < to:
        consistency = tuple(await consistency_proof(store, size_from, to))
    return UtilityBatch(
        size_from=size_from, size_to=to, old=old, new=new.note, consistency=consistency,
        entries=tuple(entries), keys=tuple(sorted(keys, key=lambda k: k.index)),
        assignments=tuple(assignments), cursor=start,
        next=entries[-1].index + 1 if more else None,
    )
