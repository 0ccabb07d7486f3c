"""The process the crash test kills: real ingest commits and the real sealer on one database.

Usage: python log_crash_child.py DB LOG_KEY_FILE POOL_FILE START SEED
Commits the pool's signed messages from START on, in small batches, while sealing with a random
batch size; prints "ready" once the sealer's start-up check (newest checkpoint vs its tree) passed.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import cbor2
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_store
from meterchain.contract.note import NoteSigner


async def main(db: str, key: str, pool_file: str, start: int, seed: int) -> None:
    rng = random.Random(seed)
    pool: list[tuple[str, bytes]] = [tuple(m) for m in cbor2.loads(Path(pool_file).read_bytes())]
    sealer = Sealer(await open_store(db), NoteSigner.parse(Path(key).read_text()),
                    max_leaves=rng.randint(1, 40))
    await sealer.start()  # refuses a tree that does not match the newest checkpoint
    ingest = Ingest(await open_store(db))
    print("ready", flush=True)

    async def commit() -> None:
        position = start
        while position < len(pool):
            size = rng.randint(1, 30)
            await ingest.process(pool[position : position + size])
            position += size
            await asyncio.sleep(0)

    async def seal() -> None:
        while True:
            sealer.max_leaves = rng.randint(1, 40)
            if not await sealer.seal_once():
                await asyncio.sleep(0.001)

    await asyncio.gather(commit(), seal())


if __name__ == "__main__":
    db, key, pool, start, seed = sys.argv[1:6]
    asyncio.run(main(db, key, pool, int(start), int(seed)))
