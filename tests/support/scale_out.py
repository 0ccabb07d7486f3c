"""Shared by several test modules (moved here from test_scale_out.py, so no test imports another)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from meterchain.backend.config import BackendConfig
from meterchain.backend.service import serve
from meterchain.mqtt.broker import RunningBroker


def needs_shared_subscriptions(broker: RunningBroker) -> None:
    if broker.kind != "mosquitto":
        pytest.skip(f"{broker.kind} has no MQTT 5 shared subscriptions ($share); "
                    "install Mosquitto (apt-get install mosquitto)")


#: A serve() start-up budget: an ingest role starts its check pool (processes importing the
#: checks) before it is ready, 27-35 s at load 17-19 (docs/benchmarks.md).
READY_WITHIN = 120.0


@contextlib.asynccontextmanager
async def serving(config: BackendConfig) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``serve(config)`` until the block ends; fail fast if it stops by itself."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=READY_WITHIN, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raise what stopped it
    assert ready.is_set(), f"serve({config.roles}) did not become ready within {READY_WITHIN} s"
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
