"""Proofs from stored nodes: the O(log n) nodes a plan names, read as one query of a 16-node
range per group touched (six at 10^7 leaves) through the connection's :class:`NodeReader` cache.

Stored nodes are never rewritten, so a proof for any signed checkpoint can be built from the
current store, however much the tree has grown since.
"""

from __future__ import annotations

from collections.abc import Sequence

from meterchain.backend.log.nodes import reader_for
from meterchain.backend.log.tree import ProofPlan, consistency_plan, inclusion_plan
from meterchain.backend.store import LogStore, ProofStore
from meterchain.contract.assignment import AssignmentOpening
from meterchain.contract.bundle import Bundle
from meterchain.contract.errors import MeterchainError, ProofError
from meterchain.contract.policy import LoggedLeaf, LoggedOpening


class ProofUnavailable(MeterchainError):
    """The thing to prove does not exist (``not-found``) or is not sealed yet (``not-sealed``)."""

    check = "not-found"


async def _assemble(store: LogStore, plan: ProofPlan, size: int) -> list[bytes]:
    return plan.assemble(await reader_for(store).hashes(plan.node_ids, size))


async def inclusion_proof(store: LogStore, index: int, size: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves (RFC 9162 §2.1.3)."""
    return await _assemble(store, inclusion_plan(index, size), size)


async def inclusion_proofs(store: LogStore, indices: Sequence[int], size: int) -> list[list[bytes]]:
    """Inclusion proofs of several leaves in the tree of ``size``, in order; the nodes of all of
    them read together (one query for the groups none of them has cached)."""
    plans = [inclusion_plan(index, size) for index in indices]
    fetched = await reader_for(store).hashes(
        dict.fromkeys(node for plan in plans for node in plan.node_ids), size)
    return [plan.assemble(fetched) for plan in plans]


async def consistency_proof(store: LogStore, old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof between two tree sizes (RFC 9162 §2.1.4)."""
    if not 0 < old_size <= new_size:
        raise ProofError("a consistency proof needs 0 < old <= new", old=old_size, new=new_size)
    return await _assemble(store, consistency_plan(old_size, new_size), new_size)


async def build_bundle(store: ProofStore, device: str, seq: int, point: str | None = None,
                       openings: Sequence[tuple[int, AssignmentOpening]] = ()) -> str:
    """The reading's proof bundle against the newest checkpoint, with every sealed device leaf
    of its device (each with its own inclusion proof) so the signing key is proven too. Given a
    metering ``point`` and the ``(leaf index, opening)`` of its binding's leaves, a version-2
    bundle that proves the point too (those under the checkpoint, docs/format.md §5.1)."""
    row = await store.reading(device, seq)
    if row is None:
        raise ProofUnavailable(f"no reading {seq} of device {device} is stored",
                               device=device, seq=seq)
    checkpoint = await store.latest_checkpoint()
    if checkpoint is None or row.leaf_index is None or row.leaf_index >= checkpoint.size:
        raise ProofUnavailable(
            f"reading {seq} of device {device} is stored but not sealed yet; retry after the "
            "next seal",
            check="not-sealed",
            device=device,
            seq=seq,
        )
    size = checkpoint.size
    keys = [(leaf.data, leaf.leaf_index) for leaf in await store.device_leaves(device)
            if leaf.leaf_index is not None and leaf.leaf_index < size]
    opened = [(opening, index) for index, opening in openings if index < size]
    # Every proof of the bundle from one read of their nodes, not one read each (issue 20).
    proofs = iter(await inclusion_proofs(
        store, [index for _, index in keys] + [row.leaf_index] + [index for _, index in opened], size))
    device_leaves = tuple(LoggedLeaf(data, index, tuple(next(proofs))) for data, index in keys)
    reading = LoggedLeaf(row.message, row.leaf_index, tuple(next(proofs)))
    assignments = tuple(LoggedOpening(opening, index, tuple(next(proofs))) for opening, index in opened)
    return Bundle(reading=reading, device_leaves=device_leaves, checkpoint=checkpoint.note,
                  point=point, assignments=assignments).to_text()
