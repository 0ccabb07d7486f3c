"""Which tree nodes the log stores, and how every other perfect node follows from them.

The store keeps the tlog-tiles strata only: leaf hashes (level 0, the ``leaves`` table) and the
perfect nodes at levels 8, 16, 24, … (``log_nodes``): exactly the hashes that tiles publish. A
perfect node at level 8k + j (0 < j < 8) is the fold of 2^j consecutive stored nodes at level 8k,
all inside one tile, so deriving it costs one range read and at most 255 node hashes (the
reader folds the whole tile once, backend/log/nodes.py), never a pass over the leaves. Storing
all levels cost ~90 B per leaf; the strata cost ~0.13 B per leaf beyond the leaf hash the leaf
row already holds (docs/log.md, "Storage").
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.backend.log.tiles import TILE_HEIGHT, TILE_WIDTH
from meterchain.backend.log.tree import NodeId

STRIDE = TILE_HEIGHT


def is_stored(level: int) -> bool:
    """True for the levels the store keeps (0 in ``leaves``, 8, 16, … in ``log_nodes``)."""
    return level % STRIDE == 0


@dataclass(frozen=True, slots=True)
class Span:
    """The stored nodes a perfect node folds from: ``count`` nodes at ``level`` from ``first``."""

    level: int
    first: int
    count: int

    @property
    def tile(self) -> int:
        """Index of the tile (at this stored level) that holds the whole span."""
        return self.first // TILE_WIDTH


def span_of(node: NodeId) -> Span:
    """The stored nodes under ``node`` at the nearest stored level at or below it."""
    below = node.level % STRIDE
    return Span(node.level - below, node.index << below, 1 << below)

