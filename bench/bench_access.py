"""What scoping costs: a household's day of readings through the visibility query (occupancy →
meter binding → readings, plus the route's visibility check) beside the admin's unscoped read of
the same device and window, same database, same run.

    .venv/bin/python bench/bench_access.py --devices 200 --readings 500 --rounds 300
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time

from meterchain.backend.access.model import KeyKind, PointKind, Principal, Scope
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.store import open_store

T0 = 1_700_000_100 - 1_700_000_100 % 900
DAY = 96


async def populate(path: str, devices: int, readings: int) -> None:
    """Rows written straight into the tables (no signatures: this measures queries only)."""
    store = await open_store(path)
    tables = PartyTables(store)
    await tables.add_utility("u", "", 0)
    await tables.add_community("c", "u", "", 0)
    db = store.connection
    await db.execute("BEGIN")
    leaf_id = 0
    for d in range(devices):
        device, meter, point, household = f"gw-{d}", f"M-{d}", f"mp-{d}", f"h-{d}"
        await db.execute("INSERT INTO households VALUES (?, 'c', '', 0)", (household,))
        await db.execute("INSERT INTO metering_points VALUES (?, 'u', 'c', ?, 0)",
                         (point, PointKind.CONSUMPTION.value))
        await db.execute("INSERT INTO meter_bindings (metering_point, device, meter, valid_from, "
                         "valid_to, created) VALUES (?, ?, ?, 0, NULL, 0)", (point, device, meter))
        await db.execute("INSERT INTO occupancies (metering_point, household, valid_from, valid_to, "
                         "created) VALUES (?, ?, 0, NULL, 0)", (point, household))
        leaves, rows = [], []
        for seq in range(1, readings + 1):
            leaf_id += 1
            data = b"\x82" + os.urandom(276)  # a message's first byte (stored raw)
            leaves.append((leaf_id, data, hashlib.sha256(data).digest(), leaf_id - 1))
            end = T0 + 900 * seq
            rows.append((leaf_id, device, seq, meter, end - 900, end, 1000 * seq, 0))
        await db.executemany("INSERT INTO leaves (id, kind, data, leaf_hash, leaf_index, "
                             "received_at) VALUES (?, 'reading', ?, ?, ?, 0)", leaves)
        await db.executemany('INSERT INTO readings (leaf_id, device, seq, meter, start, "end", '
                             "import_wh, export_wh) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    await db.execute("COMMIT")
    await store.close()


async def measure(path: str, devices: int, readings: int, rounds: int) -> dict[str, float]:
    store = await open_store(path)
    tables = PartyTables(store)
    scoped_ms, admin_ms = [], []
    for r in range(rounds):
        d = (r * 7919) % devices
        start = T0 + 900 * (1 + (r * 31) % max(1, readings - DAY))
        household = Principal(KeyKind.HOUSEHOLD, f"h-{d}", frozenset({Scope.READ}), "k")
        t = time.perf_counter()
        assert await tables.point_visible(household, f"mp-{d}")
        got = await tables.readings(household, point=f"mp-{d}", start=start,
                                    end=start + 900 * DAY, limit=1000)
        scoped_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        plain = await store.readings(f"gw-{d}", start, start + 900 * DAY, 1000)
        admin_ms.append((time.perf_counter() - t) * 1000)
        assert [row.seq for row, _ in got] == [row.seq for row in plain] and len(plain) == DAY
    await store.close()
    return {"scoped_p50": statistics.median(scoped_ms), "admin_p50": statistics.median(admin_ms),
            "scoped_p99": sorted(scoped_ms)[int(0.99 * rounds) - 1],
            "admin_p99": sorted(admin_ms)[int(0.99 * rounds) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--readings", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        asyncio.run(populate(path, args.devices, args.readings))
        result = asyncio.run(measure(path, args.devices, args.readings, args.rounds))
    total = args.devices * args.readings
    print(f"{total} readings, {args.devices} metering points; one day ({DAY} readings) per query")
    print(f"household, scoped (visibility check + query): p50 {result['scoped_p50']:.3f} ms, "
          f"p99 {result['scoped_p99']:.3f} ms")
    print(f"admin, unscoped device query:                p50 {result['admin_p50']:.3f} ms, "
          f"p99 {result['admin_p99']:.3f} ms")
    print(f"ratio scoped / unscoped (p50): {result['scoped_p50'] / result['admin_p50']:.2f}")


if __name__ == "__main__":
    main()
