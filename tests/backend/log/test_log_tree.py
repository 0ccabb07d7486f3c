"""backend.log.tree: compact range appends and proofs assembled from stored perfect nodes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.backend.log.tree import (
    CompactRange,
    NodeId,
    ProofPlan,
    consistency_plan,
    inclusion_plan,
    peak_ids,
    perfect_subtrees,
    root_from_peaks,
)
from meterchain.contract.errors import ProofError
from meterchain.contract.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
)

MAX_SIZE = 3000


def leaves_of(size: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]


def grow(hashes: list[bytes]) -> tuple[CompactRange, dict[NodeId, bytes]]:
    """Append every leaf; return the range and the store of every emitted node."""
    tree = CompactRange()
    store: dict[NodeId, bytes] = {}
    for value in hashes:
        for node, node_value in tree.append(value):
            assert node not in store, f"{node} emitted twice"
            store[node] = node_value
    return tree, store


# One big tree shared by the proof properties: the store is what the backend would hold.
BIG_LEAVES = leaves_of(MAX_SIZE)
BIG_TREE, BIG_STORE = grow(BIG_LEAVES)


def plan_bound(size: int) -> float:
    """O(log n) fetches: at most one node per level on the path, plus one ephemeral range."""
    return 2 * math.log2(size) + 2


def test_empty_range() -> None:
    tree = CompactRange()
    assert tree.size == 0 and tree.peaks == []
    assert tree.root() == EMPTY_ROOT == root_from_peaks([])
    assert peak_ids(0) == []


def test_peak_ids_follow_the_set_bits() -> None:
    assert peak_ids(13) == [NodeId(3, 0), NodeId(2, 2), NodeId(0, 12)]
    assert peak_ids(8) == [NodeId(3, 0)]
    assert perfect_subtrees(4, 7) == [NodeId(1, 2), NodeId(0, 6)]
    assert perfect_subtrees(3, 9) == [NodeId(0, 3), NodeId(2, 1), NodeId(0, 8)]


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_compact_range_root_and_emitted_nodes(size: int) -> None:
    hashes = BIG_LEAVES[:size]
    tree, store = grow(hashes)
    assert tree.size == size
    assert tree.root() == root_from_leaf_hashes(hashes)
    assert len(store) == 2 * size - size.bit_count()
    # Exactly the perfect subtrees that fit in [0, size), each with its true hash.
    for node, value in store.items():
        assert node.end_leaf <= size
        if node.level <= 3:
            assert value == root_from_leaf_hashes(hashes[node.first_leaf : node.end_leaf])
    assert [store[node] for node in peak_ids(size)] == tree.peaks


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_SIZE), st.integers(min_value=0, max_value=50))
def test_restore_from_stored_peaks_then_keep_appending(size: int, more: int) -> None:
    total = min(size + more, MAX_SIZE)
    restored = CompactRange.from_nodes(size, [BIG_STORE[node] for node in peak_ids(size)])
    assert restored.root() == root_from_leaf_hashes(BIG_LEAVES[:size])
    for value in BIG_LEAVES[size:total]:
        for node, node_value in restored.append(value):
            assert BIG_STORE[node] == node_value
    assert restored.root() == root_from_leaf_hashes(BIG_LEAVES[:total])


@st.composite
def index_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(min_value=1, max_value=MAX_SIZE))
    return draw(st.integers(min_value=0, max_value=size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new_size = draw(st.integers(min_value=1, max_value=MAX_SIZE))
    return draw(st.integers(min_value=1, max_value=new_size)), new_size


def stored_nodes_only(plan: ProofPlan, size: int) -> dict[NodeId, bytes]:
    """Fetch the plan from the store, checking it asks only for nodes a tree of ``size`` has."""
    for node in plan.node_ids:
        assert node.end_leaf <= size, f"{node} does not exist yet in a tree of {size}"
    assert len(set(plan.node_ids)) == len(plan.node_ids)
    return {node: BIG_STORE[node] for node in plan.node_ids}


@settings(max_examples=60, deadline=None)
@given(index_in_tree())
def test_inclusion_plan_matches_reference(case: tuple[int, int]) -> None:
    index, size = case
    plan = inclusion_plan(index, size)
    assert len(plan.node_ids) <= plan_bound(size)
    proof = plan.assemble(stored_nodes_only(plan, size))
    assert proof == inclusion_proof(index, BIG_LEAVES[:size])


@settings(max_examples=60, deadline=None)
@given(two_sizes())
def test_consistency_plan_matches_reference(case: tuple[int, int]) -> None:
    old_size, new_size = case
    plan = consistency_plan(old_size, new_size)
    assert len(plan.node_ids) <= plan_bound(new_size)
    proof = plan.assemble(stored_nodes_only(plan, new_size))
    assert proof == consistency_proof(old_size, BIG_LEAVES[:new_size])


def test_plans_on_small_trees_exhaustively() -> None:
    for size in range(1, 70):
        for index in range(size):
            plan = inclusion_plan(index, size)
            assert plan.assemble(stored_nodes_only(plan, size)) == inclusion_proof(
                index, BIG_LEAVES[:size]
            )
        for old_size in range(1, size + 1):
            plan = consistency_plan(old_size, size)
            assert plan.assemble(stored_nodes_only(plan, size)) == consistency_proof(
                old_size, BIG_LEAVES[:size]
            )


def test_missing_or_malformed_fetched_node_raises() -> None:
    plan = inclusion_plan(5, 13)
    fetched = {node: BIG_STORE[node] for node in plan.node_ids}
    missing = dict(fetched)
    del missing[plan.node_ids[-1]]
    with pytest.raises(ProofError) as raised:
        plan.assemble(missing)
    assert raised.value.context["step"] == "assemble"
    fetched[plan.node_ids[0]] = b"short"
    with pytest.raises(ProofError):
        plan.assemble(fetched)


def test_bad_input_raises_typed_errors() -> None:
    with pytest.raises(ProofError):
        CompactRange.from_nodes(3, [BIG_LEAVES[0]])  # 3 needs two peaks
    with pytest.raises(ProofError):
        CompactRange.from_nodes(-1, [])
    with pytest.raises(ProofError):
        CompactRange().append(b"\x00" * 31)
    with pytest.raises(ProofError):
        inclusion_plan(3, 3)
    with pytest.raises(ProofError):
        consistency_plan(0, 3)
    with pytest.raises(ProofError):
        consistency_plan(4, 3)
    with pytest.raises(ProofError):
        peak_ids(True)
