"""Perfect-node hashes from a store that keeps only the strata, with an LRU of full tiles.

A request for any set of perfect nodes of a tree of ``size`` leaves becomes one query for the
tiles it touches (leaf hashes for level 0, ``log_nodes`` above; three to six tiles for a proof at
10^7 leaves) plus the folds of :mod:`~meterchain.backend.log.strata`. A tile of a given width
never changes (a partial tile only grows into wider ones), so tiles are cached by (level, index,
width) in an LRU: the upper levels stay hot, and a warm proof often needs no query at all.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from meterchain.backend.log.strata import Span, span_of
from meterchain.backend.log.tiles import TILE_WIDTH
from meterchain.backend.log.tree import NodeId
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import HASH_SIZE, node_hash

#: Tiles kept in memory per reader, each with its inner levels (~35 KiB for a full tile).
DEFAULT_CACHED_TILES = 1024

#: A tile's stored hashes and the perfect nodes above them inside it: levels[j][k] is the node
#: over bottom hashes [k·2^j, (k+1)·2^j) of the tile (complete pairs only, for a partial tile).
TileLevels = tuple[list[bytes], ...]


def tile_levels(bottom: list[bytes]) -> TileLevels:
    """Fold a tile once (at most 255 node hashes) so every node in it is a lookup."""
    levels = [bottom]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return tuple(levels)


class StrataStore(Protocol):
    async def strata_ranges(self, ranges: Sequence[tuple[int, int, int]]) -> list[list[bytes]]: ...


class NodeReader:
    """Reads node hashes for proofs, tiles and the sealer's restart; one per store connection."""

    def __init__(self, store: StrataStore, *, cached_tiles: int = DEFAULT_CACHED_TILES) -> None:
        self.store = store
        self.cached_tiles = cached_tiles
        # (level, index, width) -> levels: a tile of a given width never changes, partial or not.
        self._tiles: OrderedDict[tuple[int, int, int], TileLevels] = OrderedDict()
        self.reads = 0  # queries issued (benchmarks and tests look at it)

    def _cached(self, level: int, index: int, width: int) -> TileLevels | None:
        exact = self._tiles.get((level, index, width))
        if exact is not None:
            self._tiles.move_to_end((level, index, width))
            return exact
        full = self._tiles.get((level, index, TILE_WIDTH))
        if full is not None:  # an older, narrower view of a full tile: its levels' prefixes
            self._tiles.move_to_end((level, index, TILE_WIDTH))
            return tuple(row[: width >> j] for j, row in enumerate(full) if width >> j)
        return None

    async def tiles(self, wanted: Mapping[tuple[int, int], int]) -> dict[tuple[int, int], TileLevels]:
        """Tiles by (stored tree level, tile index) -> width, each as its levels (the bottom is
        the stored hashes [256·index, 256·index + width)); all uncached ones in ONE query."""
        found: dict[tuple[int, int], TileLevels] = {}
        missing: list[tuple[int, int, int]] = []
        for (level, index), width in wanted.items():
            levels = self._cached(level, index, width)
            if levels is None:
                missing.append((level, index, width))
            else:
                found[(level, index)] = levels
        if not missing:
            return found
        self.reads += 1
        ranges = [(level, index * TILE_WIDTH, index * TILE_WIDTH + width)
                  for level, index, width in missing]
        for (level, index, width), hashes in zip(
            missing, await self.store.strata_ranges(ranges), strict=True
        ):
            if len(hashes) != width:
                raise ProofError(
                    "the store lacks nodes the tree should have; run `meterchain audit --rebuild`",
                    step="read", level=level, first=index * TILE_WIDTH, expected=width,
                    found=len(hashes),
                )
            for position, value in enumerate(hashes):
                if len(value) != HASH_SIZE:
                    raise ProofError("a stored hash is not 32 bytes", step="read", level=level,
                                     index=index * TILE_WIDTH + position)
            levels = found[(level, index)] = tile_levels(hashes)
            if self.cached_tiles > 0:
                self._tiles[(level, index, width)] = levels
                if len(self._tiles) > self.cached_tiles:
                    self._tiles.popitem(last=False)
        return found

    async def tile(self, level: int, index: int, width: int) -> bytes:
        """One tile as served: stored hashes [256·index, 256·index + width) concatenated."""
        return b"".join((await self.tiles({(level, index): width}))[(level, index)][0])

    async def hashes(self, ids: Iterable[NodeId], size: int) -> dict[NodeId, bytes]:
        """The hashes of perfect nodes ``ids`` of the tree of ``size`` leaves."""
        spans: dict[NodeId, Span] = {}
        widths: dict[tuple[int, int], int] = {}
        for node in ids:
            if node.end_leaf > size:
                raise ProofError("node is beyond the tree", step="read", level=node.level,
                                 index=node.index, size=size)
            span = spans[node] = span_of(node)
            # Read the whole tile as the tree of `size` has it: siblings share it.
            widths[(span.level, span.tile)] = min(TILE_WIDTH,
                                                  (size >> span.level) - span.tile * TILE_WIDTH)
        tiles = await self.tiles(widths)
        found: dict[NodeId, bytes] = {}
        for node, span in spans.items():
            height = span.count.bit_length() - 1
            offset = span.first - span.tile * TILE_WIDTH
            found[node] = tiles[(span.level, span.tile)][height][offset >> height]
        return found


_readers: weakref.WeakKeyDictionary[object, NodeReader] = weakref.WeakKeyDictionary()


def reader_for(store: StrataStore) -> NodeReader:
    """The cached reader of this store connection (created on first use)."""
    reader = _readers.get(store)
    if reader is None:
        reader = _readers[store] = NodeReader(store)
    return reader
