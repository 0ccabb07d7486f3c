"""Perfect-node hashes from a store that keeps only the strata, with an LRU of full tiles.

A request for any set of perfect nodes of a tree of ``size`` leaves becomes one range read per
tile touched (leaf hashes for level 0, ``log_nodes`` above) plus the folds of
:mod:`~meterchain.backend.log.strata`: an inclusion proof at 10^7 leaves touches three tiles.
Full tiles never change, so they are cached (upper levels stay hot: a few hundred tiles cover
the levels above 8 of a 10^9-leaf tree); partial tiles are read afresh, they still grow.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from meterchain.backend.log.strata import Span, fold_perfect, span_of
from meterchain.backend.log.tiles import TILE_WIDTH
from meterchain.backend.log.tree import NodeId
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import HASH_SIZE

#: Full tiles kept in memory per reader: 8 KiB each, so 4096 tiles = 32 MiB.
DEFAULT_CACHED_TILES = 4096


class StrataStore(Protocol):
    async def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...
    async def node_range(self, level: int, start: int, end: int) -> list[bytes]: ...


class NodeReader:
    """Reads node hashes for proofs, tiles and the sealer's restart; one per store connection."""

    def __init__(self, store: StrataStore, *, cached_tiles: int = DEFAULT_CACHED_TILES) -> None:
        self.store = store
        self.cached_tiles = cached_tiles
        self._tiles: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self.reads = 0  # range reads issued (benchmarks and tests look at it)

    async def tile(self, level: int, index: int, width: int) -> bytes:
        """Stored hashes [256·index, 256·index + width) at stored tree ``level``, concatenated."""
        key = (level, index)
        cached = self._tiles.get(key)
        if cached is not None:
            self._tiles.move_to_end(key)
            return cached[: width * HASH_SIZE]
        first = index * TILE_WIDTH
        self.reads += 1
        if level == 0:
            hashes = await self.store.leaf_hashes(first, first + width)
        else:
            hashes = await self.store.node_range(level, first, first + width)
        if len(hashes) != width:
            raise ProofError(
                "the store lacks nodes the tree should have; run `meterchain audit --rebuild`",
                step="read", level=level, first=first, expected=width, found=len(hashes),
            )
        data = b"".join(hashes)
        if width == TILE_WIDTH and self.cached_tiles > 0:
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
            # Read the whole tile as the tree of `size` has it: siblings share it.
            widths[(span.level, span.tile)] = min(TILE_WIDTH,
                                                  (size >> span.level) - span.tile * TILE_WIDTH)
        tiles = {key: await self.tile(key[0], key[1], width) for key, width in widths.items()}
        found: dict[NodeId, bytes] = {}
        for node, span in spans.items():
            data = tiles[(span.level, span.tile)]
            offset = (span.first - span.tile * TILE_WIDTH) * HASH_SIZE
            if span.count == 1:
                found[node] = data[offset : offset + HASH_SIZE]
            else:
                found[node] = fold_perfect([
                    data[at : at + HASH_SIZE]
                    for at in range(offset, offset + span.count * HASH_SIZE, HASH_SIZE)
                ])
        return found


_readers: weakref.WeakKeyDictionary[object, NodeReader] = weakref.WeakKeyDictionary()


def reader_for(store: StrataStore) -> NodeReader:
    """The cached reader of this store connection (created on first use)."""
    reader = _readers.get(store)
    if reader is None:
        reader = _readers[store] = NodeReader(store)
    return reader
