"""The log's tree as stored nodes: a compact range that grows by appends, and proof plans.

The store keeps every *perfect* subtree hash, addressed by :class:`NodeId` (level, index): the
hash of leaves [index·2^level, (index+1)·2^level); level 0 holds the leaf hashes. Appending never
rewrites a stored node, and any proof is assembled from O(log n) stored nodes, never by rehashing
leaves: a proof hash over a range that is not a perfect subtree (at most one per proof, on the
tree's right edge; transparency-dev/merkle calls it "ephemeral") is the fold of its perfect pieces.

Pure code: the caller fetches the planned nodes from its store and hands them back to assemble.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import (
    HASH_SIZE,
    MAX_TREE_SIZE,
    consistency_proof_ranges,
    inclusion_proof_ranges,
    node_hash,
    root_from_peaks,
)

__all__ = [
    "CompactRange",
    "NodeId",
    "ProofPlan",
    "consistency_plan",
    "inclusion_plan",
    "peak_ids",
    "perfect_subtrees",
    "root_from_peaks",
]


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """A perfect subtree: the hash of leaves [index·2^level, (index+1)·2^level)."""

    level: int
    index: int

    @property
    def first_leaf(self) -> int:
        return self.index << self.level

    @property
    def end_leaf(self) -> int:
        return (self.index + 1) << self.level


def perfect_subtrees(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees covering leaves [start, end), left to right.

    For a range that is itself an RFC 9162 subtree (start aligned to a power of two at least as
    large as the range) these are its peaks, largest first, and its hash is their right fold.
    """
    nodes: list[NodeId] = []
    while start < end:
        # The largest aligned block starting at `start` that still fits before `end`.
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        nodes.append(NodeId(level, start >> level))
        start += 1 << level
    return nodes


def peak_ids(size: int) -> list[NodeId]:
    """Node ids of the perfect subtrees of a tree of ``size`` leaves, largest first."""
    _require_size(size, "size")
    return perfect_subtrees(0, size)


#: From this many leaves on, :meth:`CompactRange.extend` hashes level by level.
_BULK_FROM = 64


class CompactRange:
    """The right edge of a growing tree: one perfect subtree hash per set bit of ``size``.

    Enough to compute the root and to append, in O(log n) memory; restore it after a restart from
    the stored nodes at :func:`peak_ids` with :meth:`from_nodes`.
    """

    __slots__ = ("peaks", "size")

    def __init__(self) -> None:
        self.size: int = 0
        self.peaks: list[bytes] = []

    @classmethod
    def from_nodes(cls, size: int, peaks: Sequence[bytes]) -> CompactRange:
        """Rebuild from the hashes of ``peak_ids(size)``, largest first."""
        _require_size(size, "size")
        expected = size.bit_count()
        if len(peaks) != expected:
            raise ProofError(
                "a tree of this size has one peak per set bit",
                step="restore",
                size=size,
                got=len(peaks),
                expected=expected,
            )
        for position, peak in enumerate(peaks):
            _require_hash(peak, step="restore", size=size, position=position)
        restored = cls()
        restored.size = size
        restored.peaks = [bytes(peak) for peak in peaks]
        return restored

    def append(self, leaf_hash: bytes) -> list[tuple[NodeId, bytes]]:
        """Add one leaf; return every perfect node this completes, the leaf (level 0) first.

        One new node per trailing one bit of the old size, plus the leaf: 2n - popcount(n) nodes
        over n appends.
        """
        _require_hash(leaf_hash, step="append", size=self.size)
        if self.size >= MAX_TREE_SIZE:
            raise ProofError("tree is full", step="append", size=self.size)
        value = bytes(leaf_hash)
        index = self.size
        created = [(NodeId(0, index), value)]
        level = 0
        while index & 1:
            value = node_hash(self.peaks.pop(), value)
            index >>= 1
            level += 1
            created.append((NodeId(level, index), value))
        self.peaks.append(value)
        self.size += 1
        return created

    def extend(self, leaf_hashes: Sequence[bytes], stride: int) -> list[tuple[int, int, bytes]]:
        """Append many leaves; return the perfect nodes they complete at levels that are positive
        multiples of ``stride``, as (level, index, hash), ordered by level, then index.

        The bulk path of :meth:`append` (no per-node objects): what the sealer stores. A batch is
        hashed one level at a time (one list comprehension per level, issue 20); a few leaves
        (the audit's one at a time) take the per-leaf loop, whose cost does not grow with the
        tree.
        """
        if stride < 1:
            raise ValueError("stride must be at least 1")
        if self.size + len(leaf_hashes) > MAX_TREE_SIZE:
            raise ProofError("tree is full", step="append", size=self.size)
        types = set(map(type, leaf_hashes))  # checked at C speed; the loop only names the culprit
        if not types <= {bytes, bytearray} or not set(map(len, leaf_hashes)) <= {HASH_SIZE}:
            for position, value in enumerate(leaf_hashes):
                if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
                    _require_hash(value, step="append", size=self.size, position=position)
        if len(leaf_hashes) >= _BULK_FROM:
            return self._extend_by_level(leaf_hashes, stride, bytearray in types)
        return sorted(self._extend_by_leaf(leaf_hashes, stride))

    def _extend_by_level(self, leaf_hashes: Sequence[bytes], stride: int, copy: bool
                         ) -> list[tuple[int, int, bytes]]:
        """Each level's new nodes from the level below in one pass: the row at level L holds the
        nodes [size >> L, new size >> L); an odd first index pairs it with the old peak."""
        size, end = self.size, self.size + len(leaf_hashes)
        old = {level: peak for level, peak in zip(
            (n.level for n in perfect_subtrees(0, size)), self.peaks, strict=True)}
        sha256, kept, tops = hashlib.sha256, [], {}
        row: list[bytes] = [bytes(h) for h in leaf_hashes] if copy else list(leaf_hashes)
        level, first = 0, size
        while row:
            if end >> level & 1:
                tops[level] = row[-1]  # the new peak at this level
            if first & 1:
                row.insert(0, old[level])
            pairs = iter(row)  # an odd last node has no pair: it is the peak kept above
            row = [sha256(b"\x01" + left + right).digest()
                   for left, right in zip(pairs, pairs, strict=False)]
            level, first = level + 1, first >> 1
            if level % stride == 0:
                kept += [(level, first + offset, value) for offset, value in enumerate(row)]
        self.peaks = [tops[n.level] if n.level in tops else old[n.level]
                      for n in perfect_subtrees(0, end)]
        self.size = end
        return kept

    def _extend_by_leaf(self, leaf_hashes: Sequence[bytes], stride: int) -> list[tuple[int, int, bytes]]:
        peaks, size, kept = self.peaks, self.size, []
        sha256, prefix = hashlib.sha256, b"\x01"
        for value in leaf_hashes:
            index, level = size, 0
            while index & 1:
                value = sha256(prefix + peaks.pop() + value).digest()
                index >>= 1
                level += 1
                if level % stride == 0:
                    kept.append((level, index, value))
            peaks.append(bytes(value))
            size += 1
        self.size = size
        return kept

    def root(self) -> bytes:
        """MTH of the whole tree (RFC 9162 §2.1.1); SHA-256 of nothing when empty."""
        return root_from_peaks(self.peaks)


@dataclass(frozen=True, slots=True)
class ProofPlan:
    """Which stored nodes a proof needs (``node_ids``, the fetch list) and how to combine them.

    ``elements`` lists, per proof hash in order, the perfect subtrees whose right fold it is (one
    node for all but at most one element).
    """

    node_ids: list[NodeId]
    elements: tuple[tuple[NodeId, ...], ...]

    @classmethod
    def from_ranges(cls, ranges: Sequence[tuple[int, int]]) -> ProofPlan:
        elements = tuple(tuple(perfect_subtrees(start, end)) for start, end in ranges)
        unique = dict.fromkeys(node for element in elements for node in element)
        return cls(node_ids=list(unique), elements=elements)

    def assemble(self, fetched: Mapping[NodeId, bytes]) -> list[bytes]:
        """The proof hashes, in order, from the fetched node hashes."""
        proof: list[bytes] = []
        for position, element in enumerate(self.elements):
            hashes = []
            for node in element:
                value = fetched.get(node)
                if value is None:
                    raise ProofError(
                        "a planned node was not fetched",
                        step="assemble",
                        position=position,
                        level=node.level,
                        index=node.index,
                    )
                _require_hash(value, step="assemble", level=node.level, index=node.index)
                hashes.append(value)
            proof.append(root_from_peaks(hashes))
        return proof


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """Plan the inclusion proof of leaf ``index`` in the tree of ``size`` (RFC 9162 §2.1.3)."""
    return ProofPlan.from_ranges(inclusion_proof_ranges(index, size))


def consistency_plan(old_size: int, new_size: int) -> ProofPlan:
    """Plan the consistency proof from ``old_size`` to ``new_size`` (RFC 9162 §2.1.4)."""
    return ProofPlan.from_ranges(consistency_proof_ranges(old_size, new_size))


def _require_size(size: object, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_TREE_SIZE:
        raise ProofError(
            f"{name} must be an integer in [0, 2^64)",
            check=ProofError.check,
            step="size",
            **{name: size},
        )


def _require_hash(value: object, **context: object) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        raise ProofError(f"node hash must be {HASH_SIZE} bytes", check=ProofError.check, **context)
