"""The layout upgrade of an existing log: store the levels a stride-8 database lacks.

Databases sealed before stride 4 hold levels 8, 16, … only (``log_meta`` says stride 8, set by
migration 9). A migration is SQL and cannot hash, so the sealer (the single writer) runs this on
start, before it seals again: every missing level 4, 12, 20, … is folded from the stored level
below it, in chunks of one transaction each (INSERT OR IGNORE), lowest level first, each level
resuming after the highest index it already holds. A kill mid-way loses at most one chunk; the
next start goes on from there. The layout becomes stride 4 in a last transaction of its own.
Until then readers fold the missing groups from the level below (backend/log/nodes.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from meterchain.backend.log.nodes import fold_levels
from meterchain.backend.log.strata import STRIDE, is_stored
from meterchain.contract.errors import MeterchainError
from meterchain.contract.merkle import HASH_SIZE

log = logging.getLogger(__name__)

#: Nodes written per transaction (at level 4 that reads 16 × as many leaf hashes: ≈ 2 MiB).
CHUNK = 4096


class BackfillError(MeterchainError):
    """The stored level a missing one folds from is itself incomplete: the store is damaged."""

    check = "store"


class LayoutStore(Protocol):
    async def strata_layout(self) -> int: ...
    async def stored_end(self, level: int) -> int: ...
    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]: ...
    async def backfill_nodes(self, nodes: Sequence[tuple[int, int, bytes]],
                             layout: int | None = None) -> None: ...


async def backfill_strata(store: LayoutStore, size: int, *, chunk: int = CHUNK) -> int:
    """Bring a tree of ``size`` leaves to the current layout; return how many nodes it stored."""
    layout = await store.strata_layout()
    if layout == STRIDE:
        return 0
    if layout % STRIDE:
        raise BackfillError(f"unknown log layout: stride {layout}", layout=layout)
    missing = [level for level in range(STRIDE, size.bit_length(), STRIDE)
               if not is_stored(level, layout)]
    starts = {level: await store.stored_end(level) for level in missing}
    total = sum(max(0, (size >> level) - starts[level]) for level in missing)
    log.info("log layout upgrade (stride %d -> %d): %d nodes to store at levels %s",
             layout, STRIDE, total, missing)
    written, reported = 0, time.monotonic()
    for level in missing:
        source = level - level % layout  # the stored level below
        shift = level - source
        count = size >> level
        for first in range(starts[level], count, chunk):
            end = min(count, first + chunk)
            (below,) = await store.strata_ranges([(source, first << shift, end << shift)])
            if len(below) != (end - first) << shift or any(len(v) != HASH_SIZE for v in below):
                raise BackfillError(
                    "a stored level is incomplete; run `meterchain audit --rebuild`",
                    level=source, first=first << shift, expected=(end - first) << shift,
                    found=len(below))
            folded = fold_levels(below, shift)[shift]
            await store.backfill_nodes([(level, first + i, value) for i, value in enumerate(folded)])
            written += end - first
            if time.monotonic() - reported >= 5:
                reported = time.monotonic()
                log.info("log layout upgrade: level %d, %d of %d nodes stored", level, written, total)
    await store.backfill_nodes([], layout=STRIDE)
    log.info("log layout upgrade done: %d nodes stored, layout stride %d", written, STRIDE)
    return written
