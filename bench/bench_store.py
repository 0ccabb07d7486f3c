"""Readings/s through ``Store.commit_batch`` on SQLite and on PostgreSQL, side by side, one run.

The readings are signed and checked once up front (ingest's own checks, so each is exactly what
ingest would commit: packed message, digest, leaf hash); then each store commits the same
readings in batches, after the same enrolments. PostgreSQL runs with one writer and with several
writers on separate pools (ingest workers on separate machines), each committing its share of
the devices. Rounds alternate the stores so neither gets the warmer machine. Every store is
sealed and its count checked afterwards (a bench that lost readings would say so).

    MC_PG_DSN=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python bench/bench_store.py --readings 20000 --devices 50 --batch 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: tests.support

from meterchain.backend.devices.registry import enrol  # noqa: E402
from meterchain.backend.ingest.checks import check_batch  # noqa: E402
from meterchain.backend.log.sealer import Sealer  # noqa: E402
from meterchain.backend.store import VerifiedReading, open_store  # noqa: E402
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf  # noqa: E402
from meterchain.contract.note import NoteSigner  # noqa: E402

from tests.support.backend import Gateway  # noqa: E402  the test helper that signs contract readings

NOW = int(time.time())


def readings(n: int, devices: int) -> tuple[list[Gateway], list[VerifiedReading]]:
    gateways = [Gateway(f"gw-{d:04d}") for d in range(devices)]
    messages = [gateways[i % devices].message(i // devices + 1) for i in range(n)]
    leaves = {gw.device: [DeviceLeaf(gw.device, DeviceEvent.ENROL, gw.public_key, 1, NOW)]
              for gw in gateways}
    checked = check_batch(messages, leaves, NOW)
    assert all(c.reading is not None for c in checked)
    return gateways, [c.reading for c in checked]  # type: ignore[misc]


async def commit_all(location: str, gateways: list[Gateway], items: list[VerifiedReading],
                     batch: int, writers: int) -> float:
    """Enrol, then commit ``items`` with ``writers`` stores at once (writer k takes the devices
    k, k + writers, ...); return readings/s of the commits alone; check and seal after."""
    admin = await open_store(location)
    for gw in gateways:
        await enrol(admin, gw.device, gw.public_key, NOW)
    version = await admin.key_version()
    stores = [await open_store(location) for _ in range(writers)]
    shares = [[r for r in items if int(r.device[3:]) % writers == k] for k in range(writers)]

    async def writer(store, share: list[VerifiedReading]) -> None:  # type: ignore[no-untyped-def]
        for start in range(0, len(share), batch):
            chunk = share[start : start + batch]
            acks: dict[str, int] = {}
            for r in chunk:
                acks[r.device] = max(acks.get(r.device, 0), r.seq)
            await store.commit_batch(chunk, [], acks, version)

    started = time.perf_counter()
    await asyncio.gather(*(writer(s, share) for s, share in zip(stores, shares, strict=True)))
    elapsed = time.perf_counter() - started
    stored = await admin.reading_count()
    assert stored == len(items), f"{stored} of {len(items)} readings stored"
    sealed = await Sealer(admin, NoteSigner.generate("bench.example/log"),
                          max_leaves=10_000).seal_all()
    assert sealed == len(items) + len(gateways)
    for store in (admin, *stores):
        await store.close()
    return len(items) / elapsed


async def pg_location(dsn: str) -> tuple[str, str]:
    import asyncpg

    schema = f"mc_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    return schema, f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


async def drop(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=2, help="PostgreSQL writers at once")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    dsn = os.environ.get("MC_PG_DSN", "")
    if not dsn:
        sys.exit("set MC_PG_DSN (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    gateways, items = readings(args.readings, args.devices)
    print(f"{len(items)} readings of {args.devices} devices, batches of {args.batch}")
    print("| round | SQLite readings/s | PostgreSQL, 1 writer | PostgreSQL, "
          f"{args.writers} writers | PG 1 / SQLite | PG {args.writers} / SQLite |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for round_ in range(1, args.rounds + 1):
        rates: dict[str, float] = {}
        for kind in (("sqlite", "pg1", "pgN") if round_ % 2 else ("pgN", "pg1", "sqlite")):
            if kind == "sqlite":
                with tempfile.TemporaryDirectory() as tmp:
                    rates[kind] = await commit_all(str(Path(tmp) / "mc.db"), gateways, items,
                                                   args.batch, 1)
                continue
            schema, location = await pg_location(dsn)
            try:
                rates[kind] = await commit_all(location, gateways, items, args.batch,
                                               1 if kind == "pg1" else args.writers)
            finally:
                await drop(dsn, schema)
        print(f"| {round_} | {rates['sqlite']:,.0f} | {rates['pg1']:,.0f} | {rates['pgN']:,.0f} "
              f"| {rates['pg1'] / rates['sqlite']:.2f} | {rates['pgN'] / rates['sqlite']:.2f} |",
              flush=True)


if __name__ == "__main__":
    asyncio.run(main())
