"""Merkle log throughput: leaf hashing vs bare hashlib, compact-range appends, planned proofs.

Run: .venv/bin/python bench/bench_merkle.py [--leaves N] [--repeat R]
Prints a table; the ratios compare runs made in the same process on the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import time
from collections.abc import Callable

from meterchain.backend.log.tree import CompactRange, NodeId, consistency_plan, inclusion_plan
from meterchain.contract.merkle import inclusion_proof, leaf_hash


def best_rate(operation: Callable[[], int], repeat: int) -> float:
    """Best of ``repeat`` runs, in operations per second (the least disturbed run)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = operation()
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    inputs = [os.urandom(200) for _ in range(args.leaves)]
    hashes = [leaf_hash(data) for data in inputs]
    sha256 = hashlib.sha256

    def ours() -> int:
        for data in inputs:
            leaf_hash(data)
        return len(inputs)

    def bare() -> int:
        for data in inputs:
            sha256(b"\x00" + data).digest()
        return len(inputs)

    store: dict[NodeId, bytes] = {}

    def appends() -> int:
        tree = CompactRange()
        store.clear()
        for value in hashes:
            for node, node_value in tree.append(value):
                store[node] = node_value
        return len(hashes)

    def extend() -> int:  # what the sealer runs: a batch, every 4th level kept
        CompactRange().extend(hashes, 4)
        return len(hashes)

    def bare_tree() -> int:  # the bound: the same n - 1 node hashes, one comprehension a level
        row = hashes
        while len(row) > 1:
            pairs = iter(row)
            row = [sha256(b"\x01" + left + right).digest() for left, right in zip(pairs, pairs, strict=False)]
        return len(hashes)

    size = len(hashes)
    rng = random.Random(7)

    def planned_inclusion() -> int:
        for _ in range(2000):
            plan = inclusion_plan(rng.randrange(size), size)
            plan.assemble({node: store[node] for node in plan.node_ids})
        return 2000

    def planned_consistency() -> int:
        for _ in range(2000):
            plan = consistency_plan(rng.randrange(1, size + 1), size)
            plan.assemble({node: store[node] for node in plan.node_ids})
        return 2000

    def reference_inclusion() -> int:
        inclusion_proof(rng.randrange(size), hashes)
        return 1

    rows = [
        ("bare sha256(0x00 ‖ 200 B)", best_rate(bare, args.repeat)),
        ("leaf_hash(200 B)", best_rate(ours, args.repeat)),
        ("CompactRange.append (+ store dict)", best_rate(appends, args.repeat)),
        (f"inclusion plan+assemble @ {size}", best_rate(planned_inclusion, args.repeat)),
        (f"consistency plan+assemble @ {size}", best_rate(planned_consistency, args.repeat)),
        (f"reference inclusion_proof @ {size}", best_rate(reference_inclusion, args.repeat)),
        ("bare node hashes, level by level (bound)", best_rate(bare_tree, args.repeat)),
        ("CompactRange.extend (stride 4, kept nodes)", best_rate(extend, args.repeat)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'per second':>12}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>12,.0f}")
    print(f"leaf_hash / bare sha256: {rows[1][1] / rows[0][1]:.2f}")
    print(f"planned / reference inclusion proof: {rows[3][1] / rows[5][1]:,.0f}x")
    print(f"extend / bare node hashes: {rows[7][1] / rows[6][1]:.2f}")


if __name__ == "__main__":
    main()
