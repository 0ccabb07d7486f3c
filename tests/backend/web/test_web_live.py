"""The live-telemetry map is bounded (issue 14): enrolled devices only, times not ahead of the
backend's clock, stale entries evicted when full; the registry refresh feeds it."""

from __future__ import annotations

import asyncio

from meterchain.backend.web import live as live_module
from meterchain.backend.web.live import LiveTelemetry, keep_enrolled
from meterchain.contract.telemetry import Telemetry

NOW = 1_780_000_000


def _topic(device: str) -> str:
    return f"meterchain/v1/{device}/telemetry"


def _sample(device: str, meter: str = "M1", at: int = NOW) -> bytes:
    return Telemetry(device, meter, at, 100, (2300,)).to_cbor()


def test_only_enrolled_devices_and_no_time_ahead_of_the_present() -> None:
    clock = [float(NOW)]
    live = LiveTelemetry(clock=lambda: clock[0])
    live.enrolled = frozenset({"gw-a"})
    assert live.accept(_topic("gw-a"), _sample("gw-a")) is not None
    assert live.accept(_topic("gw-x"), _sample("gw-x")) is None  # not enrolled
    # A sample stamped a year ahead is refused, so it cannot pin the meter's entry for good.
    assert live.accept(_topic("gw-a"), _sample("gw-a", at=NOW + 365 * 86400)) is None
    assert live.dropped == 2
    clock[0] += 5
    newer = live.accept(_topic("gw-a"), _sample("gw-a", at=NOW + 5))
    assert newer is not None and newer.sample.time == NOW + 5
    assert live.latest([("gw-a", "M1")])[("gw-a", "M1")].sample.time == NOW + 5


def test_a_full_map_evicts_stale_entries_before_refusing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(live_module, "MAX_METERS", 3)
    clock = [float(NOW)]
    live = LiveTelemetry(clock=lambda: clock[0])
    for meter in ("M1", "M2", "M3"):
        assert live.accept(_topic("gw-a"), _sample("gw-a", meter)) is not None
    assert live.accept(_topic("gw-a"), _sample("gw-a", "M4")) is None  # full, nothing stale
    clock[0] += live_module.STALE_SECONDS + 1
    assert live.accept(_topic("gw-a"), _sample("gw-a", "M4", at=int(clock[0]))) is not None
    assert set(live.latest([("gw-a", m) for m in ("M1", "M2", "M3", "M4")])) == {("gw-a", "M4")}


async def test_keep_enrolled_refreshes_from_the_registry() -> None:
    live = LiveTelemetry()
    answers = [[("gw-a", 1)], [("gw-a", 1), ("gw-b", 2)]]

    async def devices() -> list[tuple[str, int]]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    task = asyncio.create_task(keep_enrolled(live, devices, every=0.01))
    try:
        for _ in range(200):
            if live.enrolled == frozenset({"gw-a", "gw-b"}):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert live.enrolled == frozenset({"gw-a", "gw-b"})
