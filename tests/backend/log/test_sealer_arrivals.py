"""Sealing driven by arrivals (issue 20): a commit is sealed within the coalescing window, not the
timer; commits inside one window share a seal; without coalescing only the timer (or M) seals."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from meterchain.backend.log.sealer import Sealer

from tests.support.backend import Gateway, backend, close


async def _sealed_size(sealer: Sealer) -> int:
    checkpoint = await sealer.store.latest_checkpoint()
    return checkpoint.size if checkpoint else 0


async def test_a_commit_is_sealed_after_the_window_not_the_timer(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    sealer.interval, sealer.coalesce = 3600.0, 0.05  # the timer never fires in this test
    seals: list[int] = []

    async def on_sealed(size: int, note: str) -> None:
        seals.append(size)

    sealer.on_sealed = on_sealed
    task = asyncio.create_task(sealer.run())
    try:
        await asyncio.sleep(0.2)  # started (enrolment leaf not yet sealed: nothing notified it)
        start = time.monotonic()
        await ingest.process([gw.message(1)])
        await ingest.process([gw.message(2)])  # inside the same window: the same seal
        while not seals and time.monotonic() - start < 10:
            await asyncio.sleep(0.01)
        assert seals == [3], seals  # enrolment + both readings, one seal
        assert time.monotonic() - start < 10
        await ingest.process([gw.message(3)])
        while len(seals) < 2 and time.monotonic() - start < 20:
            await asyncio.sleep(0.01)
        assert seals == [3, 4]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await close(admin, ingest, sealer, api)


async def test_without_coalescing_a_commit_waits_for_the_timer(tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    sealer.interval, sealer.coalesce = 3600.0, None
    task = asyncio.create_task(sealer.run())
    try:
        await asyncio.sleep(0.1)
        await ingest.process([gw.message(1)])
        await asyncio.sleep(0.5)
        assert await _sealed_size(sealer) == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await close(admin, ingest, sealer, api)


async def test_a_sealer_stopped_as_a_commit_wakes_it_stops(tmp_path: Path) -> None:
    """Its stop (cancellation) and a commit's wake in one loop turn: the stop wins.

    Through asyncio.wait_for (Python 3.11) the wake's result came back instead of the
    cancellation, and the sealer sealed on after its stop (a backend's shutdown would hang)."""
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(tmp_path, gw)
    sealer.interval, sealer.coalesce = 3600.0, None
    task = asyncio.create_task(sealer.run())
    try:
        deadline = time.monotonic() + 60
        while not sealer._wake._waiters:  # type: ignore[attr-defined]  # waiting for a commit
            assert time.monotonic() < deadline and not task.done(), "the sealer did not start"
            await asyncio.sleep(0.01)
        sealer._wake.set()
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.cancelled(), f"the sealer went on after its stop: {task}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await close(admin, ingest, sealer, api)
