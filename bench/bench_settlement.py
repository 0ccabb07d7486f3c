"""Settlement runner cost: a day of stored readings settled from the store, against the pure engine
settling the same inputs in the same run.

Run: .venv/bin/python bench/bench_settlement.py [--members 200] [--intervals 96]
Readings are signed and committed through the real ingest first (not timed). Then timed: one
settlement pass over the whole day (queries, reading parses, energy derivation, settle, rows,
settlement leaves, one transaction) and the same IntervalInputs settled by `settle_interval`
alone. Prints a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support

from meterchain.backend.settlement.netting import settle_interval  # noqa: E402
from meterchain.backend.settlement.runner import rebuild  # noqa: E402

from tests.support.settlement import COMMUNITY, T0, close_site, open_site  # noqa: E402


async def main(members: int, intervals: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = await open_site(Path(tmp), deadline_seconds=3600)
        points = [(f"mp-{i:04d}", f"gw-{i // 8:03d}", f"M{i}") for i in range(members)]
        for point, device, meter in points:
            await site.member(point, device, meter)
        for k in range(intervals + 1):
            batch = [await site.step(d, m, T0 + 900 * k, 0 if k == 0 else 100 + i % 300,
                                     0 if k == 0 or i % 3 else 400)
                     for i, (_, d, m) in enumerate(points)]
            for chunk in range(0, len(batch), 1000):
                await site.send(*batch[chunk:chunk + 1000])
        began = time.perf_counter()
        report = await site.runner.settle_community(COMMUNITY, T0 + 900 * intervals)
        runner_s = time.perf_counter() - began
        assert len(report.settled) == intervals, report
        rows = await site.tables.revisions(COMMUNITY, T0, T0 + 900 * intervals)
        inputs = [rebuild(row)[0] for row in rows]
        began = time.perf_counter()
        for settled in inputs:
            settle_interval(settled.community(), settled.interval, settled.listings)
        engine_s = time.perf_counter() - began
        await close_site(site)
    print(f"| {members} members × {intervals} intervals | runner pass {runner_s:.2f} s "
          f"({intervals / runner_s:.0f} intervals/s) | engine alone {engine_s:.3f} s | "
          f"ratio {runner_s / engine_s:.1f}× |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--intervals", type=int, default=96)
    args = parser.parse_args()
    asyncio.run(main(args.members, args.intervals))
