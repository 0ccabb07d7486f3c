"""A stop (the task's cancellation) that comes in the loop turn a poller's sleep ends stops it.

On Python 3.11 asyncio.wait_for hands back the inner result when the cancellation and the inner
completion meet in one turn; a poller that slept through wait_for then polled on as if never
stopped, and an agent's task hung in its teardown (a pytest-timeout alarm in CI could not end it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import Outbox
from meterchain.agent.profile_poller import ProfilePoller
from meterchain.agent.scheduler import Poller
from meterchain.contract.reading import ClockSync
from meterchain.contract.signing import generate_private_key_pem, load_signer

NOW = 1_800_000_010


class StoppedAsItWakes:
    """A clock whose sleep ends in the same turn as the sleeping task's cancellation."""

    def __init__(self) -> None:
        self.t = float(NOW)
        self.target: asyncio.Task[object] | None = None

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)
        assert self.target is not None
        self.target.cancel()


async def stopped(clock: StoppedAsItWakes, sleep: object) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.ensure_future(sleep)  # type: ignore[arg-type]
    clock.target = task
    await asyncio.wait({task}, timeout=30)
    return task


def shared(outbox: Outbox, clock: StoppedAsItWakes) -> dict[str, object]:
    """What both pollers are built with here."""
    return {"device": "gw-1", "signer": load_signer(generate_private_key_pem()), "outbox": outbox,
            "clock": clock, "interval": 900, "metrics": AgentMetrics(),
            "clock_sync": lambda: ClockSync.SYNCED}


async def test_the_interval_poller_stops_when_cancelled_as_its_sleep_ends(tmp_path: Path) -> None:
    clock = StoppedAsItWakes()
    async with await Outbox.open(tmp_path / "outbox.sqlite", "gw-1") as outbox:
        poller = Poller(sources=[], **shared(outbox, clock))  # type: ignore[arg-type]
        task = await stopped(clock, poller._next_end())
    assert task.cancelled(), f"the poller went on after its stop: {task}"


async def test_the_dlms_poller_stops_when_cancelled_as_its_sleep_ends(tmp_path: Path) -> None:
    clock = StoppedAsItWakes()
    async with await Outbox.open(tmp_path / "outbox.sqlite", "gw-1") as outbox:
        poller = ProfilePoller(source=None, horizon_seconds=86_400, batch_intervals=4,  # type: ignore[arg-type]
                               **shared(outbox, clock))
        task = await stopped(clock, poller._sleep_to_next())
    assert task.cancelled(), f"the poller went on after its stop: {task}"
