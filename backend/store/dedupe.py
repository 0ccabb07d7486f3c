"""What committing a batch of verified readings does to each of them, decided in pure code.

Both stores answer the same question the same way, from the stored readings that share a
(device, seq) or a (device, meter, end) with the batch: a reading is STORED in a free place, a
DUPLICATE of the same reading bytes under its seq (or of an erased place: it stays taken), or a
CONFLICT (other bytes under its seq, or its interval already stored under another seq; the first
is kept and the message becomes evidence). Readings earlier in the batch count as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from meterchain.backend.store.records import Outcome, RejectionRecord, VerifiedReading
from meterchain.contract.humantime import human_time

#: A place a reading takes: ("s", device, seq) and ("m", device, meter, end).
PlaceKey = tuple[object, ...]


@dataclass(slots=True)
class Place:
    """A stored (or erased) reading a batch reading collides with. ``digest`` (SHA-256 of its
    reading bytes) must be known for a (device, seq) hit; None there makes a resend a conflict."""

    leaf_id: int  # <= 0 for a reading of this batch: -(its position among the stored ones)
    seq: int
    erased: bool = False
    digest: bytes | None = None


@dataclass(slots=True)
class BatchPlan:
    outcomes: list[Outcome] = field(default_factory=list)
    #: The readings to store, in batch order.
    fresh: list[VerifiedReading] = field(default_factory=list)
    #: Per conflict: (the reading, the kept place's leaf id as in :class:`Place`).
    conflicting: list[tuple[VerifiedReading, int]] = field(default_factory=list)
    #: Rejections for good, one per conflict.
    conflicts: list[RejectionRecord] = field(default_factory=list)


def place_keys(device: str, seq: int, meter: str, end: int) -> tuple[PlaceKey, PlaceKey]:
    return ("s", device, seq), ("m", device, meter, end)


def plan_batch(readings: Sequence[VerifiedReading], existing: dict[PlaceKey, Place]) -> BatchPlan:
    """Decide every reading's outcome; ``existing`` gains the places this batch takes."""
    plan = BatchPlan()
    for r in readings:
        seq_key, slot_key = place_keys(r.device, r.seq, r.meter, r.end)
        by_seq, by_slot = existing.get(seq_key), existing.get(slot_key)
        kept = by_seq or by_slot
        if kept is None:
            plan.fresh.append(r)
            existing[seq_key] = existing[slot_key] = Place(-len(plan.fresh) + 1, r.seq, False,
                                                           r.reading_digest)
            plan.outcomes.append(Outcome.STORED)
        elif (by_seq is not None and by_seq.digest == r.reading_digest) or kept.erased:
            plan.outcomes.append(Outcome.DUPLICATE)
        else:
            plan.outcomes.append(Outcome.CONFLICT)
            plan.conflicting.append((r, kept.leaf_id))
            what = (f"sequence {r.seq} is already stored with other reading bytes"
                    if by_seq is not None else
                    f"meter {r.meter} interval ending {human_time(r.end)} is already stored as sequence "
                    f"{kept.seq}")
            plan.conflicts.append(RejectionRecord(r.device, r.seq, "conflict",
                                                  what + "; the first is kept", True,
                                                  r.received_at))
    return plan
