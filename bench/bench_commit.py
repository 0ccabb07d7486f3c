"""commit_batch at scale: batches of new readings into a store that already holds N, this code
beside an earlier revision (--before REV, run from a temporary git worktree), side by side.

    .venv/bin/python bench/bench_commit.py --stored 1000000 --before 4dd3b27

Each code version gets its own database, made by its own ``open_store`` (its schema) and filled
with N readings of 100 devices by plain SQL (leaves sealed, the columns each schema has), then
times ``commit_batch`` of ``--batch`` new readings ``--rounds`` times: the dedupe lookups and the
inserts ingest does per batch, without MQTT or signature checks (the messages are stand-ins).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_100 - 1_700_000_100 % 900
DEVICES = 100
PACKAGES = {"contract": "contract", "backend": "backend", "agent": "agent",
            "bridge": "firmware-bridge", "cli": "cli"}


def device(i: int) -> str:
    return "gw-" + hashlib.sha256(f"installer-{i}".encode()).hexdigest()[:12]


def message(i: int, seq: int) -> bytes:
    """A stand-in message of a real one's size and first byte (stored as it is)."""
    return b"\x82" + hashlib.sha256(f"{i}-{seq}".encode()).digest() * 8 + bytes(27)


def fill(path: Path, stored: int) -> None:
    """N sealed readings by plain SQL, in whatever readings columns this schema has."""
    with sqlite3.connect(path) as db:
        columns = [c[1] for c in db.execute("PRAGMA table_info(readings)")]
        leaves, rows = [], []
        for n in range(stored):
            seq, i = n // DEVICES + 1, n % DEVICES
            data, end = message(i, seq), T0 + 900 * seq
            leaves.append((n + 1, data, hashlib.sha256(b"\x00" + data).digest(), n, end))
            values = {"device": device(i), "seq": seq, "meter": f"SDM630-{i:05d}",
                      "start": end - 900, "end": end, "import_wh": 1000 * seq, "export_wh": 7 * seq,
                      "reading_digest": hashlib.sha256(data).digest(), "leaf_id": n + 1,
                      "received_at": end}
            rows.append(tuple(values[c] for c in columns))
        db.executemany("INSERT INTO leaves (id, kind, data, leaf_hash, leaf_index, received_at) "
                       "VALUES (?, 'reading', ?, ?, ?, ?)", leaves)
        quoted = ", ".join(f'"{c}"' for c in columns)
        db.executemany(f"INSERT INTO readings ({quoted}) VALUES ({', '.join('?' for _ in columns)})",
                       rows)


async def measure(path: Path, stored: int, batch: int, rounds: int) -> list[float]:
    from meterchain.backend.store import VerifiedReading, open_store
    from meterchain.contract import merkle

    await (await open_store(path)).close()
    fill(path, stored)
    store = await open_store(path)
    fields = {f.name for f in dataclasses.fields(VerifiedReading)}
    first = stored // DEVICES + 1
    seconds = []
    for r in range(rounds):
        readings = []
        for n in range(batch):
            seq, i = first + (r * batch + n) // DEVICES, n % DEVICES
            data, end = message(i, seq), T0 + 900 * seq
            values = {"device": device(i), "seq": seq, "meter": f"SDM630-{i:05d}",
                      "start": end - 900, "end": end, "import_wh": 1000 * seq, "export_wh": 7 * seq,
                      "message": data, "stored": data, "reading_digest": hashlib.sha256(data).digest(),
                      "leaf_hash": merkle.leaf_hash(data), "received_at": end}
            readings.append(VerifiedReading(**{k: v for k, v in values.items() if k in fields}))
        start = time.perf_counter()
        await store.commit_batch(readings, [], {}, await store.key_version())
        seconds.append(time.perf_counter() - start)
    await store.close()
    return seconds


def run_at(rev: str, workdir: Path, args: list[str]) -> list[float]:
    """This script's measurement with the meterchain of git revision ``rev``."""
    tree, package = workdir / "tree", workdir / "pkg" / "meterchain"
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    try:
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for name, folder in PACKAGES.items():
            (package / name).symlink_to(tree / folder)
        out = subprocess.run([sys.executable, __file__, "--measure", *args], check=True,
                             capture_output=True, text=True, cwd=workdir,
                             env={**os.environ, "PYTHONPATH": str(package.parent)}).stdout
        return json.loads(out)
    finally:
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="also measure this git revision, side by side")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    numbers = ["--stored", str(args.stored), "--batch", str(args.batch), "--rounds", str(args.rounds)]
    if args.measure:
        with tempfile.TemporaryDirectory(prefix="mc-commit-") as tmp:
            print(json.dumps(asyncio.run(measure(Path(tmp) / "mc.db", args.stored, args.batch,
                                                 args.rounds))))
        return
    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mc-commit-") as tmp:
        if args.before:
            runs[args.before] = run_at(args.before, Path(tmp), numbers)
        runs["this code"] = json.loads(subprocess.run(
            [sys.executable, __file__, "--measure", *numbers], check=True, capture_output=True,
            text=True).stdout)
    for name, seconds in runs.items():
        ms = [round(s * 1000, 1) for s in seconds]
        print(f"| {name} | {args.stored:,} stored | commit_batch of {args.batch:,}: {ms} ms "
              f"(median {statistics.median(ms)}) |")

if __name__ == "__main__":
    main()
