"""The log at scale: appends, proofs from SQLite (warm and cold), bytes per reading; pymerkle beside.

Run: .venv/bin/python bench/bench_log.py [--sizes 1000000,10000000] [--readings 100000]
       [--proofs 1000] [--cold 30] [--pymerkle-sizes 1000000] [--dir bench/results/log]
       [--reuse] [--before REV]
       [--bytes-only]
Builds each log through the real store code (leaves inserted as ingest does, sealed by the real
Sealer in batches of 100k), then times proofs through the API's code path. "Cold" = a fresh
process per sample, the database file's pages evicted from the OS cache first (posix_fadvise
DONTNEED; no root needed); each sample also counts its page reads and how long its threads
waited for a CPU (a shared machine's share of the tail), and ``--before REV`` times the same
samples with that git revision's NodeReader, interleaved, on the same files. pymerkle 7
(GPL-3.0) runs in bench/.venv-pymerkle, created here on first use, on the same entry sizes; it
is never imported by meterchain.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from meterchain.backend.log.proofs import consistency_proof, inclusion_proof
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.log.strata import STRIDE
from meterchain.backend.log.tree import CompactRange, consistency_plan, inclusion_plan
from meterchain.backend.store import VerifiedReading, open_store
from meterchain.contract import merkle
from meterchain.contract.note import NoteSigner

HERE = Path(__file__).resolve().parent
PYMERKLE_VENV = HERE / ".venv-pymerkle"
ENTRY_SIZE = 277  # bytes of a signed reading message (CBOR [reading, DER signature]) as ingest stores it
CHUNK = 100_000


def evict(path: Path) -> None:
    """Drop the database files' pages from the OS page cache (the next read goes to disk)."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if name.exists():
            fd = os.open(name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def quantiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{statistics.median(ms):.3f} / {p99:.3f} / {ms[-1]:.3f}"


# ---------------------------------------------------------------- ours: build


BARE_PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL")  # the store's (sqlite.py)


async def build_log(path: Path, size: int, seed: int) -> dict[str, float]:
    """Our log built as the product builds it, chunk by chunk: each leaf hashed and INSERTed
    with ingest's statement and committed, then the real Sealer seals the chunk (reads the
    pending leaves, extends the tree, sets their leaf indices, stores every 4th level, signs and
    commits a checkpoint). Interleaved per chunk, the bound: a bare loop of hashlib + one
    ``executemany`` of the same rows into a plain table (no indexes, no tree) with the store's
    pragmas. Rates by wall time and by this process's CPU time (all threads: aiosqlite's too)."""
    bare_path = path.with_suffix(".bare")
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), bare_path, Path(f"{bare_path}-wal"),
                 Path(f"{bare_path}-shm")):
        name.unlink(missing_ok=True)
    store = await open_store(path)
    sealer = Sealer(store, NoteSigner.generate("bench.example/log"), max_leaves=CHUNK)
    await sealer.start()
    rng = random.Random(seed)
    wall = {"insert": 0.0, "seal": 0.0, "bare": 0.0, "tree": 0.0, "hash": 0.0}
    cpu = dict.fromkeys(wall, 0.0)

    def timed(name: str, started: tuple[float, float]) -> None:
        wall[name] += time.perf_counter() - started[0]
        cpu[name] += time.process_time() - started[1]

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    tree = CompactRange()
    scratch = sqlite3.connect(path.with_suffix(".nodes"))  # the tree alone: hash + store nodes
    scratch.execute("DROP TABLE IF EXISTS log_nodes")
    scratch.execute("CREATE TABLE log_nodes (level INTEGER, idx INTEGER, hash BLOB, "
                    "PRIMARY KEY (level, idx)) WITHOUT ROWID")
    bare = sqlite3.connect(bare_path)
    for pragma in BARE_PRAGMAS:
        bare.execute(pragma)
    bare.execute("CREATE TABLE leaves (id INTEGER PRIMARY KEY, kind TEXT, data BLOB, leaf_hash BLOB, "
                 "received_at INTEGER)")
    bare.commit()
    sha256 = hashlib.sha256
    with sqlite3.connect(path) as db:
        for first in range(0, size, CHUNK):
            count = min(CHUNK, size - first)
            data = [rng.randbytes(ENTRY_SIZE) for _ in range(count)]
            start = now()  # ours: ingest's share (leaf hash + INSERT + commit)
            hashes = [merkle.leaf_hash(d) for d in data]
            db.executemany(  # ingest's INSERT (backend/store/sqlite.py commit_batch)
                "INSERT INTO leaves (id, kind, data, leaf_hash, received_at) "
                "VALUES (?, 'settlement', ?, ?, 0)",
                [(first + i + 1, d, h) for i, (d, h) in enumerate(zip(data, hashes, strict=True))],
            )
            db.commit()
            timed("insert", start)
            start = now()  # ours: the sealer's share
            assert await sealer.seal_once() == count
            timed("seal", start)
            start = now()  # the bound: the same rows, plain table, same pragmas
            bare.executemany("INSERT INTO leaves VALUES (?, 'settlement', ?, ?, 0)",
                             [(first + i + 1, d, sha256(b"\x00" + d).digest()) for i, d in enumerate(data)])
            bare.commit()
            timed("bare", start)
            start = now()  # the tree alone, for its own row
            nodes = tree.extend(hashes, STRIDE)
            timed("hash", start)
            scratch.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)", nodes)
            scratch.commit()
            timed("tree", start)
    scratch.close()
    bare.close()
    for name in (path.with_suffix(".nodes"), bare_path, Path(f"{bare_path}-wal"), Path(f"{bare_path}-shm")):
        name.unlink(missing_ok=True)
    assert sealer.tree.size == size and sealer.tree.root() == tree.root()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ours = ("insert", "seal")
    return {
        # the whole append as the product does it: leaf hash + leaf INSERT + seal
        "appends_per_s": size / sum(wall[k] for k in ours),
        # the earlier composition: hash + INSERT (ingest) + tree + nodes (scratch), no
        # leaf indices or checkpoint: what the rows before this session called "appends"
        "parts_per_s": size / (wall["insert"] + wall["tree"]),
        "appends_cpu_per_s": size / sum(cpu[k] for k in ours),
        "bare_per_s": size / wall["bare"],
        "bare_cpu_per_s": size / cpu["bare"],
        "leaf_insert_per_s": size / wall["insert"],
        "leaf_insert_cpu_per_s": size / cpu["insert"],
        "seal_cpu_per_s": size / cpu["seal"],
        "seal_per_s": size / wall["seal"],
        "tree_per_s": size / wall["tree"],
        "hash_per_s": size / wall["hash"],
    }


# --------------------------------------------------------------- ours: proofs


async def warm_proofs(path: Path, count: int, seed: int) -> tuple[list[float], list[float]]:
    """Random inclusion and consistency proofs against the newest checkpoint, each checked."""
    rng = random.Random(seed)
    store = await open_store(path)
    checkpoint = await store.latest_checkpoint()
    assert checkpoint is not None
    size, root = checkpoint.size, checkpoint.root
    inclusion, consistency = [], []
    for _ in range(count):
        index = rng.randrange(size)
        start = time.perf_counter()
        proof = await inclusion_proof(store, index, size)
        inclusion.append(time.perf_counter() - start)
        leaf = (await store.leaf_hashes(index, index + 1))[0]
        assert merkle.root_from_inclusion_proof(index, size, leaf, proof) == root
        old = rng.randint(1, size)
        start = time.perf_counter()
        await consistency_proof(store, old, size)
        consistency.append(time.perf_counter() - start)
    await store.close()
    return inclusion, consistency


def io_counters() -> tuple[int, int, float]:
    """This process's (read syscalls, bytes read from the disk, seconds its threads waited for
    a CPU) so far: /proc/self/io counts every thread, aiosqlite's too, and SQLite reads one page
    per read syscall (no mmap); the wait is the run-queue delay of /proc/self/task/*/schedstat."""
    waited = sum(int((task / "schedstat").read_text().split()[1])
                 for task in Path("/proc/self/task").iterdir())
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["read_bytes"]), waited / 1e9


def reader_at(rev: str) -> type:
    """The NodeReader of git revision ``rev`` (an earlier design, for side-by-side cold runs on
    the same file): its backend/log/nodes.py and strata.py from git, run as private modules."""
    def load(name: str, path: str, imports: str = "") -> types.ModuleType:
        source = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{rev}:{path}"],
                                check=True, capture_output=True, text=True).stdout
        if imports:
            source = source.replace("from meterchain.backend.log.strata import", imports)
        module = sys.modules[name] = types.ModuleType(name)  # dataclasses look modules up
        exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
        return module

    load("_before_strata", "backend/log/strata.py")
    return load("_before_nodes", "backend/log/nodes.py", "from _before_strata import").NodeReader


async def cold_sample(path: Path, seed: int, before: str | None = None) -> dict[str, float]:
    """One fresh process: evict the file from the page cache, then time one proof of each kind,
    counting the reads each one issued. With ``before`` (a git revision) the proofs come from
    that revision's reader, checked afterwards against today's (the levels it reads, 0, 8, 16,
    …, are stored in both layouts)."""
    rng = random.Random(seed)
    evict(path)
    store = await open_store(path)
    checkpoint = await store.latest_checkpoint()
    assert checkpoint is not None
    size = checkpoint.size
    index, old = rng.randrange(size), rng.randint(1, size)
    plans = inclusion_plan(index, size), consistency_plan(old, size)
    reader = reader_at(before)(store) if before else None
    proofs = []

    async def prove(kind: int) -> None:
        if reader is None:
            proofs.append(await (inclusion_proof(store, index, size) if kind == 0
                                 else consistency_proof(store, old, size)))
        else:
            proofs.append(plans[kind].assemble(await reader.hashes(plans[kind].node_ids, size)))

    evict(path)
    own = -(io_counters()[0] - io_counters()[0])  # the read syscalls of io_counters itself
    reads, disk, waited = io_counters()
    start = time.perf_counter()
    await prove(0)
    inclusion = time.perf_counter() - start
    middle, middle_disk, middle_waited = io_counters()
    start = time.perf_counter()
    await prove(1)
    consistency = time.perf_counter() - start
    end, end_disk, end_waited = io_counters()
    if reader is not None:
        assert proofs == [await inclusion_proof(store, index, size),
                          await consistency_proof(store, old, size)]
    await store.close()
    return {"inclusion": inclusion, "consistency": consistency,
            "inclusion_reads": middle - reads - own, "consistency_reads": end - middle - own,
            "inclusion_disk_kib": (middle_disk - disk) / 1024,
            "consistency_disk_kib": (end_disk - middle_disk) / 1024,
            "inclusion_cpu_wait": middle_waited - waited,
            "consistency_cpu_wait": end_waited - middle_waited}


def cold_proofs(path: Path, count: int, before: str | None = None
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``count`` cold samples, each field of :func:`cold_sample` as a list; with ``before``, the
    same samples (same seeds, interleaved, so both see the same load) from that revision too."""
    now: dict[str, list[float]] = {}
    then: dict[str, list[float]] = {}
    for seed in range(count):
        for samples, extra in ((now, []), (then, [before] if before else None)):
            if extra is None:
                continue
            out = subprocess.run([sys.executable, __file__, "--cold-sample", str(path), str(seed),
                                  *extra], check=True, capture_output=True, text=True).stdout
            for name, value in json.loads(out).items():
                samples.setdefault(name, []).append(value)
    return now, then


def cold_rows(row: Callable[[str, str], None], label: str, cold: dict[str, list[float]]) -> None:
    """Table rows of one set of cold samples: times, page reads, the slowest sample's CPU wait."""
    count = len(cold["inclusion"])
    row(f"{label}: inclusion proof, cold ({count} fresh processes), ms p50 / p99 / max",
        quantiles(cold["inclusion"]))
    row(f"{label}: consistency proof, cold, ms p50 / p99 / max", quantiles(cold["consistency"]))
    for kind in ("inclusion", "consistency"):
        row(f"{label}: {kind} proof, cold: page reads (read syscalls) p50 / max; "
            "KiB from disk p50 / max",
            f"{spread(cold[f'{kind}_reads'])}; {spread(cold[f'{kind}_disk_kib'])}")
        slowest = max(range(count), key=cold[kind].__getitem__)
        row(f"{label}: {kind} proof, cold, slowest sample: ms, of which its threads "
            "waited for a CPU (summed); page reads", f"{cold[kind][slowest] * 1000:.3f}, "
            f"{cold[f'{kind}_cpu_wait'][slowest] * 1000:.3f}; {cold[f'{kind}_reads'][slowest]:.0f}")
        own = [max(0.0, wall - wait)
               for wall, wait in zip(cold[kind], cold[f"{kind}_cpu_wait"], strict=True)]
        row(f"{label}: {kind} proof, cold, less the CPU waits (a loaded machine's share), "
            "ms p50 / p99 / max", quantiles(own))


def spread(values: list[float]) -> str:
    """p50 / max of plain counts (pages, KiB)."""
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def strata_bytes(path: Path, size: int) -> str:
    """``log_nodes`` (every stored level above the leaves) per leaf, by dbstat, and its levels."""
    with sqlite3.connect(path) as db:
        pages = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = 'log_nodes'").fetchone()[0]
        levels = db.execute("SELECT group_concat(level) FROM (SELECT DISTINCT level FROM log_nodes "
                            "ORDER BY level)").fetchone()[0]
    return f"{(pages or 0) / size:.2f} B (levels {levels})"


# ------------------------------------------------------------- bytes/reading


async def bytes_per_reading(path: Path, readings: int) -> dict[str, object]:
    """Real signed readings from 100 gateways through commit_batch, each batch sealed after its
    commit as the running sealer does: the database's bytes per reading, dbstat's share of each
    table and index (and of free pages), and the leaf data packing (backend/store/leafdata.py)
    on the same messages."""
    sys.path.insert(0, str(HERE.parent))  # the repo root: tests.support
    from meterchain.backend.devices.registry import enrol
    from meterchain.backend.provisioning.tokens import device_id_for
    from meterchain.backend.store.leafdata import pack_leaf_data, unpack_leaf_data

    from tests.support.backend import T0, Gateway  # the tests' agent-like signer

    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)
    store = await open_store(path)
    # Device ids as provisioning makes them ("gw-" + 12 hex digits, 15 characters).
    gateways = [Gateway(device_id_for(f"installer-{i}"), meter=f"SDM630-{i:05d}")
                for i in range(100)]
    for g in gateways:
        await enrol(store, g.device, g.public_key, T0)
    sealer = Sealer(store, NoteSigner.generate("bench.example/log"), max_leaves=CHUNK)
    batch: list[VerifiedReading] = []
    message_bytes = stored_bytes = 0
    pack_seconds = unpack_seconds = 0.0
    for seq in range(1, readings // len(gateways) + 1):
        for g in gateways:
            signed = g.signed(seq)
            payload = signed.to_cbor()
            start = time.perf_counter()
            stored = pack_leaf_data(payload)  # ingest does this in its verify threads
            middle = time.perf_counter()
            unpack_leaf_data(stored)
            unpack_seconds += time.perf_counter() - middle
            pack_seconds += middle - start
            message_bytes += len(payload)
            stored_bytes += len(stored)
            batch.append(VerifiedReading(
                g.device, seq, g.meter, T0 + 900 * seq - 900, T0 + 900 * seq, 1000 * seq, 7 * seq,
                payload, stored, hashlib.sha256(signed.reading_bytes).digest(),
                merkle.leaf_hash(payload), T0 + 900 * seq))
        if len(batch) >= 5000:
            await store.commit_batch(batch, [], {}, await store.key_version())
            await sealer.seal_all()
            batch = []
    if batch:
        await store.commit_batch(batch, [], {}, await store.key_version())
    await sealer.seal_all()
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        total = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        count = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        columns = {  # an index by its table and columns: "readings(device, seq)"
            name: f"{table}({', '.join(c[2] for c in db.execute(f'PRAGMA index_info({name!r})'))})"
            for name, table in db.execute("SELECT name, tbl_name FROM sqlite_schema "
                                          "WHERE type = 'index'")}
        parts = [(columns.get(name, name), size / count) for name, size in db.execute(
            "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8")]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        parts.append(("free pages", free * total / db.execute("PRAGMA page_count").fetchone()[0]
                      / count))
    return {"per_reading": total / count, "parts": parts, "message": message_bytes / count,
            "stored": stored_bytes / count, "pack_us": pack_seconds / count * 1e6,
            "unpack_us": unpack_seconds / count * 1e6}


# ---------------------------------------------------------------------- pymerkle


def ensure_pymerkle() -> Path | None:
    python = PYMERKLE_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PYMERKLE_VENV)], check=True)
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "pymerkle>=7,<8"],
                              check=False)
        if done.returncode != 0:
            return None
    return python


def pymerkle(python: Path, action: str, db: Path, number: int, seed: int) -> dict:
    out = subprocess.run([str(python), str(HERE / "log_pymerkle_runner.py"), action, str(db),
                          str(number), str(seed)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# -------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--cold-sample":
        print(json.dumps(asyncio.run(cold_sample(Path(sys.argv[2]), int(sys.argv[3]),
                                                 *sys.argv[4:]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--proofs", type=int, default=1000)
    parser.add_argument("--cold", type=int, default=30)
    parser.add_argument("--pymerkle-sizes", default="1000000")
    parser.add_argument("--pymerkle-cold", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=HERE / "results" / "log")
    parser.add_argument("--before", metavar="REV",
                        help="also time cold proofs with the NodeReader of git revision REV, "
                        "interleaved on the same files (e.g. ed26e76: 256-wide tiles)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure proofs on the logs an earlier run left in --dir (no rebuild)")
    parser.add_argument("--bytes-only", action="store_true",
                        help="only the bytes per reading (no log sizes, no pymerkle)")
    args = parser.parse_args()
    if args.bytes_only:
        args.sizes = args.pymerkle_sizes = ""
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = ["| what | figure |", "|---|---|"]

    def row(what: str, figure: str) -> None:
        rows.append(f"| {what} | {figure} |")
        print(rows[-1], flush=True)

    row("load average at start (1 / 5 / 15 min)", " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    ours_appends: dict[int, dict[str, float]] = {}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        path = args.dir / f"log-{size}.db"
        if not (args.reuse and path.exists()):
            rates = ours_appends[size] = asyncio.run(build_log(path, size, seed=size))
            row(f"ours {size:,}: appends, the whole path (leaf hash + ingest's leaf INSERT + the "
                "Sealer's seal: tree, leaf indices, every 4th level, signed checkpoint), wall; CPU",
                f"{rates['appends_per_s']:,.0f}; {rates['appends_cpu_per_s']:,.0f} leaves/s")
            row(f"bound {size:,}: bare hashlib + executemany of the same rows (plain table, same "
                "pragmas), wall; CPU", f"{rates['bare_per_s']:,.0f}; {rates['bare_cpu_per_s']:,.0f} leaves/s")
            row(f"appends, ours / bare bound at {size:,} (same run, interleaved), wall; CPU",
                f"{rates['appends_per_s'] / rates['bare_per_s']:.2f}; "
                f"{rates['appends_cpu_per_s'] / rates['bare_cpu_per_s']:.2f}")
            row(f"ours {size:,}: leaf hash + INSERT + tree + nodes, no seal (the rows before "
                "issue 20's second session), wall", f"{rates['parts_per_s']:,.0f} leaves/s")
            row(f"ours {size:,}: tree appends alone (node hashes + store nodes; no leaf hash or INSERT)",
                f"{rates['tree_per_s']:,.0f} leaves/s (hashing alone {rates['hash_per_s']:,.0f}/s)")
            row(f"ours {size:,}: seal alone (read pending, hash, index leaves, nodes, sign, commit), "
                "wall; CPU", f"{rates['seal_per_s']:,.0f}; {rates['seal_cpu_per_s']:,.0f} leaves/s")
            row(f"ours {size:,}: leaf hash + insert alone (ingest's share), wall; CPU",
                f"{rates['leaf_insert_per_s']:,.0f}; {rates['leaf_insert_cpu_per_s']:,.0f} leaves/s")
        inclusion, consistency = asyncio.run(warm_proofs(path, args.proofs, seed=1))
        row(f"ours {size:,}: inclusion proof, warm, ms p50 / p99 / max", quantiles(inclusion))
        row(f"ours {size:,}: consistency proof, warm, ms p50 / p99 / max", quantiles(consistency))
        cold, before = cold_proofs(path, args.cold, args.before)
        cold_rows(row, f"ours {size:,}", cold)
        if before:
            cold_rows(row, f"ours {size:,}, reader of {args.before} (256-wide tiles)", before)
        row(f"ours {size:,}: database bytes per leaf (leaves + strata + checkpoints)",
            f"{path.stat().st_size / size:.1f}")
        row(f"ours {size:,}: stored levels above the leaves, bytes per leaf", strata_bytes(path, size))

    python = ensure_pymerkle() if args.pymerkle_sizes else None
    for size in [int(s) for s in args.pymerkle_sizes.split(",") if s]:
        if python is None:
            row(f"pymerkle {size:,}", "not run: its venv could not be created")
            continue
        db = args.dir / f"pymerkle-{size}.db"
        db.unlink(missing_ok=True)
        built = pymerkle(python, "build", db, size, seed=size)
        row(f"pymerkle {size:,}: append_entries (leaf hash + leaf INSERT, rollback journal, "
            "synchronous FULL; no tree), wall; CPU",
            f"{built['appends_per_s']:,.0f}; {built['appends_cpu_per_s']:,.0f} leaves/s")
        if size in ours_appends:
            mine = ours_appends[size]
            row(f"appends, ours (whole path) / pymerkle at {size:,} (same run), wall; CPU",
                f"{mine['appends_per_s'] / built['appends_per_s']:.2f}; "
                f"{mine['appends_cpu_per_s'] / built['appends_cpu_per_s']:.2f}")
        warm = pymerkle(python, "prove", db, args.proofs // 5, seed=1)
        row(f"pymerkle {size:,}: inclusion proof, one process, ms p50 / p99 / max",
            quantiles(warm["inclusion"]))
        row(f"pymerkle {size:,}: consistency proof, one process, ms p50 / p99 / max",
            quantiles(warm["consistency"]))
        cold_i, cold_c = [], []
        for seed in range(args.pymerkle_cold):
            evict(db)
            sample = pymerkle(python, "prove", db, 1, seed=100 + seed)
            cold_i += sample["inclusion"]
            cold_c += sample["consistency"]
        row(f"pymerkle {size:,}: inclusion proof, cold ({args.pymerkle_cold} fresh processes), "
            "ms p50 / p99 / max", quantiles(cold_i))
        row(f"pymerkle {size:,}: consistency proof, cold, ms p50 / p99 / max", quantiles(cold_c))
        row(f"pymerkle {size:,}: database bytes per leaf", f"{built['bytes'] / size:.1f}")

    if args.readings:
        found = asyncio.run(bytes_per_reading(args.dir / "readings.db", args.readings))
        row(f"bytes per reading, {args.readings:,} real signed readings, everything",
            f"{found['per_reading']:.1f} B")
        row("… of which (dbstat, B per reading)",
            ", ".join(f"{n} {b:.1f}" for n, b in found["parts"]))  # type: ignore[attr-defined]
        row("leaf data: message → stored (packed), B per reading; pack / unpack µs",
            f"{found['message']:.1f} → {found['stored']:.1f}; "
            f"{found['pack_us']:.1f} / {found['unpack_us']:.1f}")
    row("load average at end (1 / 5 / 15 min)", " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    (args.dir / "table.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
