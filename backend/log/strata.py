"""Which tree nodes the log stores, and how every other perfect node follows from them.

The store keeps every STRIDE-th level: leaf hashes (level 0, the ``leaves`` table) and the perfect
nodes at levels 4, 8, 12, 16, … (``log_nodes``). A perfect node at level 4k + j (0 < j < 4) is the
fold of 2^j consecutive stored nodes at level 4k, all inside one aligned *group* of 16, so deriving
it costs one short range read and at most 15 node hashes (backend/log/nodes.py), never a pass over
the leaves. The tlog-tiles strata (levels 8, 16, …: what tiles publish, TILE_HEIGHT = 8) are a
subset, so a tile is still one range read. Why 4 and not 8: a cold proof reads one group per
stored level, and a group of 16 leaf rows is 2–3 pages where a tile of 256 was ≈ 22; the extra
levels 4, 12, 20, … cost one 32-byte node per 16 leaves (docs/log.md, "Storage").

Databases written before stride 4 stored only levels 8, 16, …: their layout (``log_meta``) says
8 until the sealer's start-up backfill (backend/log/backfill.py) has stored the missing levels.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.backend.log.tree import NodeId

#: Stored levels are the multiples of STRIDE; a group is the 2^STRIDE stored nodes one stored
#: node above them covers (aligned), the unit the reader fetches and caches.
STRIDE = 4
GROUP_WIDTH = 1 << STRIDE
#: The stride of databases written before stride 4 (the tlog-tiles strata only).
LEGACY_STRIDE = 8


def is_stored(level: int, stride: int = STRIDE) -> bool:
    """True for the levels a layout of ``stride`` keeps (0 in ``leaves``, others in ``log_nodes``)."""
    return level % stride == 0


@dataclass(frozen=True, slots=True)
class Span:
    """The stored nodes a perfect node folds from: ``count`` nodes at ``level`` from ``first``."""

    level: int
    first: int
    count: int

    @property
    def group(self) -> int:
        """Index of the aligned group of GROUP_WIDTH stored nodes that holds the whole span."""
        return self.first // GROUP_WIDTH


def span_of(node: NodeId) -> Span:
    """The stored nodes under ``node`` at the nearest stored level at or below it."""
    below = node.level % STRIDE
    return Span(node.level - below, node.index << below, 1 << below)
