"""pymerkle 7 (GPL-3.0) under the same workload as bench_log.py; run only in bench/.venv-pymerkle.

Usage: python log_pymerkle_runner.py build DB N SEED | prove DB COUNT SEED
Prints one JSON object. Never imported by meterchain.
"""

import json
import os
import random
import sys
import time

from pymerkle import SqliteTree


def build(path: str, count: int, seed: int) -> dict:
    rng = random.Random(seed)
    entries = [rng.randbytes(277) for _ in range(count)]
    tree = SqliteTree(path)
    start, cpu = time.perf_counter(), time.process_time()
    tree.append_entries(entries)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tree.close()
    return {"appends_per_s": count / seconds, "appends_cpu_per_s": count / cpu,
            "bytes": os.path.getsize(path)}


def prove(path: str, count: int, seed: int) -> dict:
    """The first proof of a fresh process is the cold one; the rest run with its subroot cache."""
    rng = random.Random(seed)
    tree = SqliteTree(path)
    size = tree.get_size()
    inclusion, consistency = [], []
    for _ in range(count):
        index = rng.randint(1, size)
        start = time.perf_counter()
        tree.prove_inclusion(index, size)
        inclusion.append(time.perf_counter() - start)
        old = rng.randint(1, size)
        start = time.perf_counter()
        tree.prove_consistency(old, size)
        consistency.append(time.perf_counter() - start)
    tree.close()
    return {"inclusion": inclusion, "consistency": consistency}


if __name__ == "__main__":
    action, db, number, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps((build if action == "build" else prove)(db, number, seed)))
