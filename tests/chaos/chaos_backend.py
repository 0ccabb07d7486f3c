"""The backend process the chaos suite kills: the real ingest and the real sealer on one database.

Usage: python chaos_backend.py DB LOG_KEY_FILE CONTROL_KEY_FILE ORIGIN BROKER_URL
Prints "ready" once the sealer's start-up check passed and ingest is subscribed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meterchain.backend.ingest.control_key import load_or_create_control_key
from meterchain.backend.ingest.worker import Ingest
from meterchain.backend.log.sealer import Sealer
from meterchain.backend.store import open_store
from meterchain.contract.note import NoteSigner
from meterchain.mqtt import Backoff


async def main(db: str, key: str, control_file: str, origin: str, url: str) -> None:
    sealer = Sealer(await open_store(db), NoteSigner.parse(Path(key).read_text()), max_leaves=64)
    await sealer.start()
    control = await load_or_create_control_key(control_file, origin, sealer.store, create=True)
    ingest = Ingest(await open_store(db), broker_url=url, control=control)
    ingest.on_commit = sealer.notify
    task = asyncio.create_task(ingest.run(backoff=Backoff(initial=0.1, maximum=0.5)))
    await asyncio.wait_for(ingest.connected.wait(), 30)
    print("ready", flush=True)
    await asyncio.gather(task, sealer.run())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
