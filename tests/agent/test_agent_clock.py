"""The agent's clocks: the time-lapse clock the demo's history runs on, and the sync status."""

from __future__ import annotations

import asyncio
import ctypes.util

import pytest
from meterchain.agent import clock as clock_module
from meterchain.agent.clock import TimeLapseClock, kernel_clock_sync


async def test_time_lapse_moves_only_when_advanced_and_wakes_the_sleepers_it_reaches() -> None:
    wall = [10_000.0]
    clock = TimeLapseClock(1_000, wall=lambda: wall[0])
    woke: list[int] = []

    async def sleeper(deadline: int) -> None:
        await clock.sleep_until(deadline)
        woke.append(deadline)

    tasks = [asyncio.create_task(sleeper(d)) for d in (1_900, 2_800)]
    await asyncio.sleep(0.01)
    assert clock.now() == 1_000 and woke == []
    assert clock.advance_to(1_900) is True
    await asyncio.sleep(0.01)
    assert woke == [1_900] and clock.now() == 1_900
    assert clock.advance_to(1_500) is True and clock.now() == 1_900  # never backwards
    clock.advance_to(2_800)
    await asyncio.gather(*tasks)
    assert woke == [1_900, 2_800]


async def test_time_lapse_never_passes_the_wall_clock_and_then_is_live() -> None:
    wall = [5_000.0]
    clock = TimeLapseClock(4_000, wall=lambda: wall[0])
    assert clock.advance_to(5_000) is True
    assert clock.advance_to(5_900) is False  # would be in the future: live instead
    assert clock.live and clock.now() == 5_000
    wall[0] = 5_010.0
    assert clock.now() == 5_010  # the wall clock from now on
    assert clock.advance_to(99_999) is False and clock.now() == 5_010


async def test_a_sleeper_waiting_when_the_clock_goes_live_sleeps_in_real_time() -> None:
    clock = TimeLapseClock(0)
    sleeper = asyncio.create_task(clock.sleep_until(10**12))  # far beyond the present
    await asyncio.sleep(0.01)
    clock.advance_to(10**12)  # the present is reached before that deadline: live
    await asyncio.sleep(0.05)
    assert clock.live and not sleeper.done()  # still waiting, now on the real clock
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    done = asyncio.create_task(clock.sleep_until(clock.now() + 0.05))
    await asyncio.wait_for(done, 2)


def test_kernel_clock_sync_looks_libc_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_library runs ldconfig in a subprocess: once per process, not once per interval."""
    calls: list[str] = []
    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name) or real(name))
    clock_module._libc.cache_clear()
    for _ in range(5):
        kernel_clock_sync()
    assert calls == ["c"]
