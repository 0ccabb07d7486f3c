"""What goes in and out of the store: plain records, independent of the database behind it."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meterchain.contract.status import GatewayStatus


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One device leaf as the key registry keeps it (log order = ``leaf_id`` order)."""

    leaf_id: int
    device: str
    event: str
    public_key: bytes
    kid: bytes
    valid_from: int
    time: int


@dataclass(frozen=True, slots=True)
class VerifiedReading:
    """A reading that passed every check, ready to be committed."""

    device: str
    seq: int
    meter: str
    start: int
    end: int
    import_wh: int
    export_wh: int
    message: bytes  # as received: the leaf data, hashed over
    #: ``message`` packed for storage (backend/store/leafdata.py), made in the verify threads.
    stored: bytes
    #: SHA-256 of the reading bytes: the same (device, seq) with these is a duplicate.
    reading_digest: bytes
    leaf_hash: bytes
    received_at: int


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    """A message refused with a stable reason code; ``permanent`` ones are reported in the ack."""

    device: str | None
    seq: int | None
    reason: str
    detail: str
    permanent: bool
    time: int


#: How long the per-minute counts of unauthenticated rejections are kept (issue 14: bounded).
REJECTION_RETENTION_SECONDS = 7 * 86400


def aggregate_junk(rejections: Iterable[RejectionRecord]
                   ) -> dict[tuple[str, str, int], tuple[int, str]]:
    """Non-permanent rejections counted per (device or "", reason, minute), with the newest
    detail: what the ``rejection_minutes`` table adds up. Permanent ones are not included."""
    counts: dict[tuple[str, str, int], tuple[int, str]] = {}
    for x in rejections:
        if x.permanent:
            continue
        key = (x.device or "", x.reason, x.time - x.time % 60)
        count, _ = counts.get(key, (0, ""))
        counts[key] = (count + 1, x.detail[:200])
    return counts


@dataclass(frozen=True, slots=True)
class VerifiedGap:
    """A gap declaration whose device signature checked (contract/gap.py): the device can no
    longer account for ``first..last``; ``message`` is the leaf data, as received."""

    device: str
    first: int
    last: int
    message: bytes
    leaf_hash: bytes
    received_at: int


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(slots=True)
class CommitResult:
    """Per verified reading, what the commit did with it (same order as given)."""

    outcomes: list[Outcome]
    #: Rejections for good created by this commit (the conflicts).
    conflicts: list[RejectionRecord] = field(default_factory=list)


class StaleKeys(Exception):
    """The device keys changed since the batch was verified; verify it again."""


@dataclass(frozen=True, slots=True)
class AckState:
    """What a device's ack needs: its ``upto``, committed seqs above it, recent rejections."""

    upto: int
    above: frozenset[int]
    recent_rejections: tuple[tuple[int, str, str], ...]
    #: Declared gaps (first, last), newest last (contract/gap.py): shown in the ack.
    gaps: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, upto: int, above: Iterable[int], recent: Sequence[Sequence[Any]],
           gaps: Sequence[tuple[int, int]]) -> AckState:
        """From what a store read: the seqs above ``upto`` stored or rejected, the permanent
        rejections newest first (seq, reason, detail), the declared gaps in log order. A declared
        gap's seqs above ``upto`` count as done; the ack shows the newest 64 gaps."""
        declared = {s for first, last in gaps if last > upto
                    for s in range(max(first, upto + 1), last + 1)}
        return cls(upto, frozenset(above) | declared,
                   tuple((s, r, d) for s, r, d in reversed(recent)), tuple(gaps[-64:]))


@dataclass(frozen=True, slots=True)
class TreeState:
    """The sealed tree: its size, the hashes of its peaks, and its newest checkpoint and batch."""

    size: int
    peaks: tuple[bytes, ...]
    checkpoint_size: int | None
    checkpoint_root: bytes | None
    last_header: bytes | None


@dataclass(frozen=True, slots=True)
class Seal:
    """Everything one sealing writes, in one transaction."""

    old_size: int
    leaf_ids: tuple[int, ...]
    nodes: tuple[tuple[int, int, bytes], ...]
    size: int
    root: bytes
    note: str
    batch_index: int
    header: bytes
    sealed: int


@dataclass(frozen=True, slots=True)
class ReadingRow:
    device: str
    seq: int
    meter: str
    start: int
    end: int
    import_wh: int
    export_wh: int
    leaf_id: int
    leaf_index: int | None
    message: bytes  # the leaf data, unpacked
    received_at: int  # the leaf's


@dataclass(frozen=True, slots=True)
class LeafRow:
    id: int
    kind: str
    data: bytes  # unpacked
    leaf_hash: bytes
    leaf_index: int | None


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    size: int
    root: bytes
    note: str
    time: int


@dataclass(frozen=True, slots=True)
class BatchRow:
    idx: int
    first: int
    size: int
    root: bytes
    sealed: int
    header: bytes


@dataclass(frozen=True, slots=True)
class AcceptedOcmf:
    """A gateway's OCMF record whose signature checked (backend/ingest/gateway_messages.py)."""

    device: str
    seq: int
    meter: str
    end: int
    record: bytes


@dataclass(frozen=True, slots=True)
class AcceptedStatus:
    """A gateway's status message whose signature checked, and when it arrived."""

    status: GatewayStatus
    message: bytes
    received: int


@dataclass(frozen=True, slots=True)
class SideCommit:
    """What :meth:`commit_side` kept: OCMF records stored, already there with the same bytes,
    refused for other bytes (device, seq); status messages written."""

    ocmf_stored: int
    ocmf_duplicates: int
    ocmf_conflicts: list[tuple[str, int]]
    statuses: int


class KeyedLeaf(NamedTuple):
    """A 'device' leaf's stored (packed) data beside its key-registry row, for audit: the
    registry columns are None when the row is missing."""

    leaf_id: int
    data: bytes
    device: str | None
    event: str | None
    public_key: bytes | None
    kid: bytes | None
    valid_from: int | None


class StoredReading(NamedTuple):
    """A reading row beside its leaf's stored (packed) data and kind (None: no such leaf)."""

    device: str
    seq: int
    meter: str
    start: int
    end: int
    import_wh: int
    export_wh: int
    leaf_id: int
    data: bytes | None
    kind: str | None


class StoredLeaf(NamedTuple):
    """A leaf as stored: packed data (empty once erased), hash, index (None: not sealed)."""

    leaf_id: int
    data: bytes
    leaf_hash: bytes
    leaf_index: int | None
    erased: bool
