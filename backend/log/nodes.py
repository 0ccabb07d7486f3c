"""Perfect-node hashes from a store that keeps every 4th level, with an LRU of node groups.

A request for any set of perfect nodes of a tree of ``size`` leaves becomes one query for the
groups of 16 stored nodes it touches (one per stored level for an inclusion proof: leaf hashes
for level 0, ``log_nodes`` above; six groups at 10^7 leaves) plus the folds of
:mod:`~meterchain.backend.log.strata` (at most 15 hashes per group). A group of a given width
never changes (a partial group only grows into wider ones), so groups are cached by (level,
index, width) in an LRU: the upper levels stay hot, and a warm proof often needs no query at all.

Tiles (256 nodes at a level 8k) are read directly as one range, not through the group cache, and
kept in a small LRU of their own. A database still waiting for its layout upgrade
(backend/log/backfill.py) lacks levels 4, 12, …: a group found short there is folded from the
256 nodes of the stored level below (one more query, at most 255 hashes), so proofs stay right.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from meterchain.backend.log.strata import GROUP_WIDTH, STRIDE, Span, span_of
from meterchain.backend.log.tiles import TILE_WIDTH
from meterchain.backend.log.tree import NodeId
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import HASH_SIZE, node_hash

#: Groups kept in memory per reader, each with its inner levels as ONE bytes object (≈ 1 KiB
#: for a full group, invisible to the garbage collector): at 10^7 leaves every group of levels
#: 12 and up, and the busiest of levels 0–8, stay hot.
DEFAULT_CACHED_GROUPS = 8192
#: Served tiles kept per reader (8 KiB each for a full tile).
DEFAULT_CACHED_TILES = 64

#: Stored hashes and the perfect nodes above them: levels[j][k] is the node over bottom hashes
#: [k·2^j, (k+1)·2^j) (complete pairs only, for a partial group).
FoldLevels = tuple[list[bytes], ...]


def fold_levels(bottom: list[bytes], height: int | None = None) -> FoldLevels:
    """Fold ``bottom`` ``height`` levels up (all the way by default) so every node is a lookup."""
    levels = [bottom]
    while len(levels[-1]) > 1 and (height is None or len(levels) <= height):
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return tuple(levels)


def folded_group(bottom: list[bytes]) -> bytes:
    """A group's stored hashes and every node above them inside it, row after row (row j: the
    nodes over 2^j stored hashes, complete pairs only), as one bytes object to cache."""
    return b"".join(b"".join(row) for row in fold_levels(bottom))


def group_node(folded: bytes, width: int, height: int, offset: int) -> bytes:
    """Node ``offset`` of row ``height`` of a group of ``width`` stored hashes (folded_group)."""
    start, count = 0, width
    for _ in range(height):
        start, count = start + count, count // 2
    if offset >= count:
        raise ProofError("node is outside its group", step="read", height=height, offset=offset,
                         width=width)
    position = (start + offset) * HASH_SIZE
    return folded[position : position + HASH_SIZE]


class StrataStore(Protocol):
    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]: ...


def _checked(hashes: list[bytes], level: int, first: int, expected: int) -> list[bytes]:
    """``hashes`` if they are exactly ``expected`` 32-byte hashes, else a ProofError."""
    if len(hashes) != expected:
        raise ProofError(
            "the store lacks nodes the tree should have; run `meterchain audit --rebuild`",
            step="read", level=level, first=first, expected=expected, found=len(hashes),
        )
    for position, value in enumerate(hashes):
        if len(value) != HASH_SIZE:
            raise ProofError("a stored hash is not 32 bytes", step="read", level=level,
                             index=first + position)
    return hashes


class NodeReader:
    """Reads node hashes for proofs, tiles and the sealer's restart; one per store connection."""

    def __init__(self, store: StrataStore, *, cached_groups: int = DEFAULT_CACHED_GROUPS,
                 cached_tiles: int = DEFAULT_CACHED_TILES) -> None:
        self.store = store
        self.cached_groups = cached_groups
        self.cached_tiles = cached_tiles
        # (level, index, width) -> folded_group: a group of a given width never changes.
        self._groups: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._tiles: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self.reads = 0  # queries issued (benchmarks and tests look at it)
        self.hashes_read = 0  # stored hashes those queries returned
        self.derived = 0  # groups folded from the level below (a layout upgrade is pending)

    def _cached(self, level: int, index: int, width: int) -> tuple[int, bytes] | None:
        for key in ((level, index, width), (level, index, GROUP_WIDTH)):
            # A full group also answers for an older, narrower view of it (same nodes).
            folded = self._groups.get(key)
            if folded is not None:
                self._groups.move_to_end(key)
                return key[2], folded
        return None

    async def _ranges(self, ranges: list[tuple[int, int, int]]) -> list[list[bytes]]:
        self.reads += 1
        found = await self.store.strata_ranges(ranges)
        self.hashes_read += sum(len(hashes) for hashes in found)
        return found

    async def groups(self, wanted: Mapping[tuple[int, int], int]
                     ) -> dict[tuple[int, int], tuple[int, bytes]]:
        """Groups by (stored tree level, group index) -> width, each as (its width as cached,
        :func:`folded_group` of the stored hashes [16·index, 16·index + width) or of the full
        group); all uncached ones in ONE query."""
        found: dict[tuple[int, int], tuple[int, bytes]] = {}
        missing: list[tuple[int, int, int]] = []
        for (level, index), width in wanted.items():
            cached = self._cached(level, index, width)
            if cached is None:
                missing.append((level, index, width))
            else:
                found[(level, index)] = cached
        if not missing:
            return found
        ranges = [(level, index * GROUP_WIDTH, index * GROUP_WIDTH + width)
                  for level, index, width in missing]
        read = await self._ranges(ranges)
        short = [position for position, (_, _, width) in enumerate(missing)
                 if len(read[position]) != width and missing[position][0] >= STRIDE]
        if short:  # levels a pending layout upgrade has not stored yet: fold from the level below
            below = await self._ranges([(level - STRIDE, first << STRIDE, end << STRIDE)
                                        for level, first, end in (ranges[p] for p in short)])
            for position, lower in zip(short, below, strict=True):
                level, first, end = ranges[position]
                levels = fold_levels(_checked(lower, level - STRIDE, first << STRIDE,
                                              (end - first) << STRIDE), STRIDE)
                read[position] = levels[STRIDE]
                self.derived += 1
        for (level, index, width), hashes in zip(missing, read, strict=True):
            folded = folded_group(_checked(hashes, level, index * GROUP_WIDTH, width))
            found[(level, index)] = (width, folded)
            if self.cached_groups > 0:
                self._groups[(level, index, width)] = folded
                if len(self._groups) > self.cached_groups:
                    self._groups.popitem(last=False)
        return found

    async def tile(self, level: int, index: int, width: int) -> bytes:
        """One tile as served: stored hashes at tree ``level`` [256·index, 256·index + width)
        concatenated; one range read (``level`` is a multiple of 8, always stored)."""
        key = (level, index, width)
        data = self._tiles.get(key)
        if data is not None:
            self._tiles.move_to_end(key)
            return data
        first = index * TILE_WIDTH
        (hashes,) = await self._ranges([(level, first, first + width)])
        data = b"".join(_checked(hashes, level, first, width))
        if self.cached_tiles > 0:
            self._tiles[key] = data
            if len(self._tiles) > self.cached_tiles:
                self._tiles.popitem(last=False)
        return data

    async def hashes(self, ids: Iterable[NodeId], size: int) -> dict[NodeId, bytes]:
        """The hashes of perfect nodes ``ids`` of the tree of ``size`` leaves."""
        spans: dict[NodeId, Span] = {}
        widths: dict[tuple[int, int], int] = {}
        for node in ids:
            if node.end_leaf > size:
                raise ProofError("node is beyond the tree", step="read", level=node.level,
                                 index=node.index, size=size)
            span = spans[node] = span_of(node)
            # Read the whole group as the tree of `size` has it: siblings share it.
            widths[(span.level, span.group)] = min(
                GROUP_WIDTH, (size >> span.level) - span.group * GROUP_WIDTH)
        groups = await self.groups(widths)
        found: dict[NodeId, bytes] = {}
        for node, span in spans.items():
            height = span.count.bit_length() - 1
            offset = span.first - span.group * GROUP_WIDTH
            width, folded = groups[(span.level, span.group)]
            found[node] = group_node(folded, width, height, offset >> height)
        return found


_readers: weakref.WeakKeyDictionary[object, NodeReader] = weakref.WeakKeyDictionary()


def reader_for(store: StrataStore) -> NodeReader:
    """The cached reader of this store connection (created on first use)."""
    reader = _readers.get(store)
    if reader is None:
        reader = _readers[store] = NodeReader(store)
    return reader
