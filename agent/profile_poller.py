"""The poll loop of a meter with a load profile: sign every interval it holds, exactly once.

Each cycle (at every interval boundary, and once right after start): open a session, read the
meter's status (serial, profile layout, clock), then fetch the intervals not yet signed, by
range, in bounded batches, oldest first, one outbox transaction per batch. A gateway, link or
meter outage therefore costs nothing the meter still holds: the next successful cycle fetches
the gap. Failures are typed, logged and counted, and the next cycle retries: a meter's fault
never stops the agent, and no loop runs without a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Protocol

from meterchain.agent.backfill import FetchWindow, is_backfill, latest_capture, plan_fetch
from meterchain.agent.clock import Clock, ClockJudge
from meterchain.agent.config import MeterConfig
from meterchain.agent.meters_dlms import IntervalValues, MeterStatus, ProfileLayout, dlms_sources
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox, is_disk_full
from meterchain.agent.scheduler import energy_reading, next_boundary
from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import sign_reading
from meterchain.contract.reading import (
    ClockSync,
    Reading,
    StatusFlag,
)
from meterchain.contract.signing import Signer, key_id

log = logging.getLogger(__name__)


class ProfileSession(Protocol):
    async def status(self, gateway: ClockSync) -> MeterStatus: ...

    async def intervals(
        self, layout: ProfileLayout, first: int, last: int
    ) -> list[IntervalValues]: ...


class ProfileSource(Protocol):
    name: str

    def session(self) -> AbstractAsyncContextManager[ProfileSession]: ...

    def close(self) -> None: ...


def settle_delay(interval: int) -> float:
    """How long after a boundary to ask: a meter writes its entry at the boundary, not before."""
    return min(5.0, interval / 4)


class ProfilePoller:
    """Signs one profile meter's intervals; one per meter and task (the meters of one port take
    turns through the source's port lock)."""

    def __init__(
        self,
        *,
        device: str,
        signer: Signer,
        source: ProfileSource,
        outbox: Outbox,
        clock: Clock,
        interval: int,
        metrics: AgentMetrics,
        clock_sync: Callable[[], ClockSync],
        horizon_seconds: int,
        batch_intervals: int,
        on_cycle: Callable[[], None] = lambda: None,
    ) -> None:
        self.device = device
        self.signer = signer
        self.key_id = key_id(signer.public_key_der)
        self.source = source
        self.outbox = outbox
        self.clock = clock
        self.interval = interval
        self.metrics = metrics
        self.clock_sync = clock_sync
        self.horizon = horizon_seconds
        self.batch = batch_intervals
        self.on_cycle = on_cycle
        self.cycles = 0
        # Cycles ended plus batches stored: what the systemd watchdog watches (a long backfill
        # is progress, a hung read is not).
        self.progress = 0
        self.failures = 0
        self.drift: dict[str, float] = {}  # meter serial -> last measured clock drift (status)
        self.judge: ClockJudge | None = None  # the agent's judge of the gateway clock
        # Per serial: capture times up to which the meter was asked and had nothing (a gap in
        # its profile). In memory only: after a restart a gap is asked for once more.
        self._scanned: dict[str, int] = {}

    async def run(self) -> None:
        """Poll now (an outage may have left a gap), then after every interval boundary."""
        while True:
            await self.poll_once()
            await self._sleep_to_next()

    async def _sleep_to_next(self) -> None:
        """Sleep past the next boundary; wake at least once a minute of real time and aim anew
        when the gateway clock was stepped back (a correction), rather than sleep until its own
        time comes back (issue 18)."""
        wake = next_boundary(self.clock.now(), self.interval) + settle_delay(self.interval)
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see Poller._next_end
                async with asyncio.timeout(min(self.interval, 60)):
                    await self.clock.sleep_until(wake)
            now = self.clock.now()
            if now >= wake:
                return
            if wake - now > 2 * self.interval:  # stepped back
                wake = next_boundary(now, self.interval) + settle_delay(self.interval)

    async def poll_once(self) -> list[int]:
        """One cycle; a failure is logged and counted, and the next cycle tries again."""
        try:
            seqs = await self._poll()
            if seqs:
                self.metrics.disk_full.set(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a meter's fault must never stop the agent
            self.failures += 1
            if is_disk_full(exc):  # the profile keeps the intervals: fetched when space returns
                self.metrics.disk_full.set(1)
                self.metrics.disk_full_cycles.inc()
                log.error("event=disk_full meter=%s detail=%r fix=free_space retry=next_cycle "
                          "(the meter's load profile is read back from the last stored interval)",
                          self.source.name, str(exc))
                self.cycles += 1
                self.progress += 1
                return []
            kind = type(exc).__name__
            self.metrics.meter_read_errors.labels(meter=self.source.name, kind=kind).inc()
            detail = exc.diagnostics() if hasattr(exc, "diagnostics") else repr(exc)
            log.warning(
                "event=meter_read_failed meter=%s kind=%s detail=%r retry=next_cycle",
                self.source.name,
                kind,
                detail,
            )
            seqs = []
        self.cycles += 1
        self.progress += 1
        return seqs

    async def _poll(self) -> list[int]:
        seqs: list[int] = []
        async with self.source.session() as meter:
            status = await meter.status(self.clock_sync())
            self._log_clock(status)
            period = status.layout.period
            # Bounded: the horizon holds at most this many batches (+1 for the time that passes).
            previous: FetchWindow | None = None
            for _ in range(self.horizon // (period * self.batch) + 2):
                window = await self._plan(status)
                if window is None or window == previous:  # nothing due, or no progress made
                    break
                previous = window
                now = self.clock.now()
                intervals = await meter.intervals(status.layout, window.first, window.last)
                stored = await self._store(status, intervals, now)
                seqs.extend(stored)
                self.progress += 1
                # A stretch the meter surely finished writing and had nothing in: don't re-ask.
                finished = latest_capture(status.meter_utc, period) - period
                self._scanned[status.serial] = max(
                    self._scanned.get(status.serial, 0), min(window.last, finished)
                )
                if not window.more:
                    break
        return seqs

    async def _plan(self, status: MeterStatus) -> FetchWindow | None:
        window = plan_fetch(
            last_end=await self.outbox.last_end(status.serial),
            scanned_to=self._scanned.get(status.serial),
            now=self.clock.now(),
            period=status.layout.period,
            horizon=self.horizon,
            batch=self.batch,
        )
        if window is not None and window.lost:
            log.warning(
                "event=backfill_beyond_horizon meter=%s serial=%s lost_intervals=%d first=%d",
                self.source.name,
                status.serial,
                window.lost,
                window.first,
            )
        return window

    async def _store(
        self, status: MeterStatus, intervals: list[IntervalValues], now: float
    ) -> list[int]:
        """Sign and store one batch in one transaction; returns the seqs."""
        period = status.layout.period
        entries = []
        backfilled = 0
        for values in intervals:
            reading = self._reading(status, values, now)
            if reading is None:
                continue
            backfilled += bool(reading.status & StatusFlag.BACKFILLED)
            entries.append(CycleEntry(reading.meter, reading.end, self._signer_for(reading)))
        seqs = await self.outbox.append_cycle(entries, now=int(now)) if entries else []
        self.metrics.readings_signed.inc(len(seqs))
        self.metrics.outbox_depth.set(await self.outbox.depth())
        log.info(
            "event=profile_cycle device=%s meter=%s serial=%s period=%d intervals=%d"
            " backfilled=%d stored=%d seqs=%s clock=%s",
            self.device,
            self.source.name,
            status.serial,
            period,
            len(intervals),
            backfilled,
            len(seqs),
            f"{seqs[0]}-{seqs[-1]}" if seqs else "-",
            status.clock.sync.value,
        )
        if seqs:
            self.on_cycle()
        return seqs

    def _reading(self, status: MeterStatus, values: IntervalValues, now: float) -> Reading | None:
        period = status.layout.period
        clock = ClockSync.DRIFTED if values.clock_doubtful else status.clock.sync
        flags = StatusFlag.BACKFILLED if is_backfill(values.end, now, period) else 0
        try:
            return energy_reading(self.device, self.key_id, status.serial, values.end - period,
                                  values.end, values.import_wh, values.export_wh, clock, flags)
        except MeterchainError as exc:
            self.metrics.meter_read_errors.labels(meter=self.source.name, kind="invalid").inc()
            log.warning(
                "event=meter_values_invalid meter=%s capture=%d detail=%r",
                self.source.name,
                values.end,
                exc.diagnostics(),
            )
            return None

    def _log_clock(self, status: MeterStatus) -> None:
        check = status.clock
        self.drift[status.serial] = check.drift
        if self.judge is not None:
            self.judge.observe_meter(check.drift, check.uncertainty, self.clock.now())
        if check.sync is ClockSync.DRIFTED:
            log.warning(
                "event=meter_clock_drift meter=%s serial=%s drift_seconds=%.1f"
                " uncertainty_seconds=%.1f",
                self.source.name,
                status.serial,
                check.drift,
                check.uncertainty,
            )

    def _signer_for(self, template: Reading) -> Callable[[int], bytes]:
        def sign(seq: int) -> bytes:
            return sign_reading(replace(template, seq=seq), self.signer).to_cbor()

        return sign


def dlms_pollers(
    meters: Sequence[MeterConfig],
    *,
    device: str,
    signer: Signer,
    outbox: Outbox,
    clock: Clock,
    interval: int,
    metrics: AgentMetrics,
    clock_sync: Callable[[], ClockSync],
    on_cycle: Callable[[], None],
) -> list[ProfilePoller]:
    """One poller per configured DLMS meter, with that meter's backfill bounds."""
    pollers = []
    for source in dlms_sources(meters, clock):
        settings = source.settings
        pollers.append(
            ProfilePoller(
                device=device,
                signer=signer,
                source=source,
                outbox=outbox,
                clock=clock,
                interval=interval,
                metrics=metrics,
                clock_sync=clock_sync,
                horizon_seconds=settings.backfill_days * 86_400,
                batch_intervals=settings.backfill_batch_intervals,
                on_cycle=on_cycle,
            )
        )
    return pollers
