"""C2SP tlog-tiles geometry (https://c2sp.org/tlog-tiles): hash tiles as ranges of stored nodes.

A tile at level L with index N holds the hashes of tree nodes at height 8·L with indices
256·N … 256·N + W − 1, concatenated (W·32 bytes). Full tiles have W = 256; the rightmost tile of a
level may be partial, served at ``.p/W``. Every tile is immutable once it exists, so mirrors and
monitors cache them forever. The log stores these strata (leaf hashes and the nodes at levels 8,
16, …) among its stored levels (every 4th: :mod:`~meterchain.backend.log.strata`), so a tile is
one range read of one level.

Only hash tiles are served: entry bundles would publish the readings, which are private
(docs/privacy.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from meterchain.contract.errors import MeterchainError

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 7  # 8·7 = 56 tree levels: far beyond any tree we will hold (2^63 leaves)
_SEGMENT = re.compile(r"x\d{3}")
_LAST = re.compile(r"\d{3}")


class TileError(MeterchainError):
    """A tile path is malformed or names a tile the tree does not have (yet)."""

    check = "tile"


@dataclass(frozen=True, slots=True)
class TileRef:
    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def tree_level(self) -> int:
        return TILE_HEIGHT * self.level

    @property
    def first_node(self) -> int:
        return self.index * TILE_WIDTH

    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def encode_index(index: int) -> str:
    """``1234067`` → ``x001/x234/067``: three-digit groups, all but the last prefixed by x."""
    if index < 0:
        raise TileError("tile index must not be negative")
    groups = []
    while True:
        groups.append(f"{index % 1000:03d}")
        index //= 1000
        if index == 0:
            break
    groups.reverse()
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    if not 0 <= level <= MAX_LEVEL or not 1 <= width <= TILE_WIDTH:
        raise TileError(f"tile level {level} or width {width} out of range")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_index(index)}{suffix}"


def parse_tile_path(path: str) -> TileRef:
    """Parse ``tile/<L>/<N>[.p/<W>]`` strictly (one spelling per tile; entries are not served)."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileError(f"{path!r} is not a tile path tile/<L>/<N>[.p/<W>]")
    if parts[1] == "entries":
        raise TileError("entry bundles are not published: readings are private")
    if not re.fullmatch(r"[0-9]", parts[1]) or int(parts[1]) > MAX_LEVEL:
        raise TileError(f"tile level {parts[1]!r} must be 0 to {MAX_LEVEL}")
    level = int(parts[1])
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not re.fullmatch(r"[1-9][0-9]{0,2}", rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
            raise TileError(f"partial width {rest[-1]!r} must be 1 to 255")
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][: -len(".p")]]
    if not _LAST.fullmatch(rest[-1]) or not all(_SEGMENT.fullmatch(s) for s in rest[:-1]):
        raise TileError(f"tile index in {path!r} is not x001/x234/067 form")
    if len(rest) > 1 and rest[0] == "x000":
        raise TileError("tile index has a leading zero group")
    index = int("".join(s.lstrip("x") for s in rest))
    return TileRef(level, index, width)


def nodes_at_level(size: int, tree_level: int) -> int:
    """How many complete nodes a tree of ``size`` leaves has at height ``tree_level``."""
    return size >> tree_level


def check_exists(ref: TileRef, size: int) -> None:
    """Raise unless the tree of ``size`` leaves has this tile (full, or partial of this width)."""
    available = nodes_at_level(size, ref.tree_level) - ref.first_node
    if available >= TILE_WIDTH and ref.width == TILE_WIDTH:
        return
    if ref.width < TILE_WIDTH and ref.width <= available:
        return
    raise TileError(
        f"{ref.path()} does not exist at tree size {size}",
        tree_size=size,
    )


def tiles_for_size(size: int) -> Iterator[TileRef]:
    """Every tile (full and rightmost partial) of every level for a tree of ``size`` leaves."""
    for level in range(MAX_LEVEL + 1):
        count = nodes_at_level(size, TILE_HEIGHT * level)
        if count == 0:
            return
        full, partial = divmod(count, TILE_WIDTH)
        for index in range(full):
            yield TileRef(level, index)
        if partial:
            yield TileRef(level, full, partial)
