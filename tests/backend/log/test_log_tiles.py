"""tlog-tiles geometry: paths round-trip, strict parsing, and an independent client rebuilds the root."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.backend.log.tiles import (
    TILE_WIDTH,
    TileError,
    TileRef,
    check_exists,
    parse_tile_path,
    tile_path,
    tiles_for_size,
)
from meterchain.backend.log.tree import CompactRange
from meterchain.contract import merkle


@given(st.integers(0, 7), st.integers(0, 10**12), st.integers(1, TILE_WIDTH))
def test_paths_round_trip(level: int, index: int, width: int) -> None:
    assert parse_tile_path(tile_path(level, index, width)) == TileRef(level, index, width)


def test_documented_examples() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(1, 5, 17) == "tile/1/005.p/17"
    assert tile_path(3, 0) == "tile/3/000"


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1234067",
        "tile/0/x1/234",
        "tile/0/x000/067",  # leading zero group: two spellings of one tile
        "tile/0/067.p/256",
        "tile/0/067.p/0",
        "tile/0/067.p/007",
        "tile/8/000",
        "tile/entries/000",
        "tiles/0/000",
        "tile/0/",
        "tile/-1/000",
    ],
)
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(TileError):
        parse_tile_path(path)


def _tree(size: int) -> tuple[dict[tuple[int, int], bytes], bytes]:
    nodes: dict[tuple[int, int], bytes] = {}
    compact = CompactRange()
    for i in range(size):
        for node_id, value in compact.append(merkle.leaf_hash(i.to_bytes(8, "big"))):
            nodes[(node_id.level, node_id.index)] = value
    return nodes, compact.root()


def _serve(nodes: dict[tuple[int, int], bytes], size: int, ref: TileRef) -> bytes:
    check_exists(ref, size)
    return b"".join(nodes[(ref.tree_level, ref.first_node + i)] for i in range(ref.width))


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 70_000))
def test_an_independent_client_rebuilds_the_signed_root_from_tiles(size: int) -> None:
    nodes, root = _tree(size)
    tiles = {ref.path(): _serve(nodes, size, ref) for ref in tiles_for_size(size)}
    # The client knows only the tile layout: level-0 tiles concatenated are the leaf hashes.
    leaf_hashes = []
    for ref in tiles_for_size(size):
        if ref.level == 0:
            data = tiles[ref.path()]
            leaf_hashes += [data[i : i + 32] for i in range(0, len(data), 32)]
    assert len(leaf_hashes) == size
    assert merkle.root_from_leaf_hashes(leaf_hashes) == root
    # Each higher tile entry is the root of its 256 children: check every level against the one below.
    for ref in tiles_for_size(size):
        if ref.level == 0:
            continue
        data = tiles[ref.path()]
        below = b"".join(
            tiles[TileRef(ref.level - 1, n, TILE_WIDTH).path()]
            for n in range(ref.first_node, ref.first_node + ref.width)
        )
        for i in range(ref.width):
            children = [below[j : j + 32] for j in range(i * 8192, (i + 1) * 8192, 32)]
            assert data[i * 32 : (i + 1) * 32] == _fold(children)


def _fold(hashes: list[bytes]) -> bytes:
    while len(hashes) > 1:
        hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def test_tiles_that_do_not_exist_yet_are_refused() -> None:
    check_exists(TileRef(0, 0, 5), 5)
    check_exists(TileRef(0, 0, 3), 5)  # an older partial tile stays valid (immutable)
    for ref, size in [(TileRef(0, 0), 5), (TileRef(0, 0, 6), 5), (TileRef(1, 0, 1), 255), (TileRef(0, 1, 1), 256)]:
        with pytest.raises(TileError):
            check_exists(ref, size)
