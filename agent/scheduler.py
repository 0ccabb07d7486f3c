"""The poll loop: at each interval boundary read every meter, sign, store one cycle, wake the publisher.

Time comes from an injected :class:`Clock`, so a test runs one-second intervals. A meter that
fails is logged and counted and simply has no reading for that interval; its registers are
cumulative, so its next reading still carries all the energy.

The clock is judged before each cycle (:class:`ClockJudge`, docs/agent.md "Clock"): a gateway
clock proven ahead or behind signs nothing (its intervals would lie in the future or the past)
and says so once a minute; when it is right again the poller goes on at the current interval,
declares the intervals it skipped (alarm ``clock-gap``) and each meter's next reading spans them
from its previous one, flagged ``SPANS_GAP``, as after a full disk. A meter whose newest signed
interval lies beyond :data:`MAX_FUTURE_SECONDS` of a clock judged right was signed while the
clock ran ahead (those readings are refused by the backend as ``future`` and quarantined): it
goes on from now.

A full disk (``database or disk is full``) costs the cycle, never the agent: it is logged and
alarmed once a minute with the fix and counted; when space returns, each meter's next reading
spans from its previous one (at most a day back), flagged ``SPANS_GAP``: the cumulative
registers carry the energy, and no per-interval value is invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from meterchain.agent.clock import Clock, ClockJudge, ClockVerdict
from meterchain.agent.exchange import MeterSerials
from meterchain.agent.meters import MeterSnapshot, MeterSource
from meterchain.agent.metrics import AgentMetrics
from meterchain.agent.outbox import CycleEntry, Outbox, is_disk_full
from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import sign_reading
from meterchain.contract.reading import (
    EXPORT_OBIS,
    IMPORT_OBIS,
    MAX_INTERVAL_SECONDS,
    ClockSync,
    Reading,
    Register,
    StatusFlag,
)
from meterchain.contract.signing import Signer, key_id

log = logging.getLogger(__name__)

#: The backend refuses readings ending further ahead of its clock (backend/ingest/checks.py).
MAX_FUTURE_SECONDS = 300
#: How often a persisting clock fault is logged and alarmed again.
CLOCK_REPORT_SECONDS = 60


def energy_reading(device: str, kid: bytes, meter: str, start: int, end: int, import_wh: int,
                   export_wh: int, clock: ClockSync, status: int = 0) -> Reading:
    """What a gateway signs for one interval of one meter: its import and export registers in
    Wh, with seq 1 until the outbox allocates the real one. Raises on values the contract
    refuses."""
    return Reading(
        device=device, key_id=kid, seq=1, meter=meter, start=start, end=end,
        registers={IMPORT_OBIS: Register(import_wh, "Wh"), EXPORT_OBIS: Register(export_wh, "Wh")},
        clock=clock, status=status,
    )


def next_boundary(now: float, interval: int) -> int:
    """The first interval end strictly after ``now`` (UTC-aligned)."""
    return (int(now) // interval + 1) * interval


class Poller:
    """Reads the meters once per interval and appends the signed readings to the outbox."""

    def __init__(
        self,
        *,
        device: str,
        signer: Signer,
        sources: Sequence[MeterSource],
        outbox: Outbox,
        clock: Clock,
        interval: int,
        metrics: AgentMetrics,
        clock_sync: Callable[[], ClockSync],
        on_cycle: Callable[[], None] = lambda: None,
        on_snapshot: Callable[[MeterSource, MeterSnapshot], None] = lambda source, snapshot: None,
        serials: MeterSerials | None = None,
        judge: ClockJudge | None = None,
        on_alarm: Callable[[str, str], None] = lambda kind, detail: None,
    ) -> None:
        self.device = device
        self.signer = signer
        self.key_id = key_id(signer.public_key_der)
        self.sources = list(sources)
        self.outbox = outbox
        self.clock = clock
        self.interval = interval
        self.metrics = metrics
        self.clock_sync = clock_sync
        self.on_cycle = on_cycle
        self.on_snapshot = on_snapshot
        self.cycles = 0
        #: The interval end the poller is asleep toward (None before its first sleep): the demo's
        #: time-lapse driver moves its clock only once every poller waits for that boundary, or a
        #: poller that computed its next end after the move would wait one boundary too far.
        self.next_end: int | None = None
        self.serials = serials  # flags a meter exchange (agent/exchange.py)
        self.judge = judge or ClockJudge()
        self.on_alarm = on_alarm
        self.skipped: tuple[int, int, ClockVerdict] | None = None  # first, last end, why
        self._reported = -float("inf")
        self.disk_full_since: int | None = None  # the first interval end not stored
        self.clock_gap = False  # a clock fault ended: the next readings span what it skipped
        self._disk_reported = -float("inf")

    async def run(self) -> None:
        """Poll forever, one cycle per interval boundary."""
        while True:
            await self.poll_once(await self._next_end())

    async def _next_end(self) -> int:
        """Sleep to the next boundary. The clock may be stepped back meanwhile (a correction
        of a clock that ran ahead): then the boundary is the new clock's next one, not a day
        of sleep (issue 18). Waking at least once a minute (real time: a clock's sleep waits
        for its own time to reach the deadline) sees the step."""
        end = self.next_end = next_boundary(self.clock.now(), self.interval)
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # comes in the turn the sleep ends, and the poller would poll on after its stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.interval, 60)):
                    await self.clock.sleep_until(end)
            now = self.clock.now()
            if now >= end:
                return end
            if end - now > self.interval:  # stepped back
                end = self.next_end = next_boundary(now, self.interval)

    async def poll_once(self, end: int) -> list[int]:
        """Read all meters for the interval ending at ``end``; store what was read; return seqs."""
        if not await self._clock_fit(end):
            self.cycles += 1  # the loop turns: the watchdog must not restart a judged agent
            return []
        start = end - self.interval
        results = await asyncio.gather(*(self._read(source) for source in self.sources))
        sync = self.clock_sync()
        entries = []
        for source, snapshot in zip(self.sources, results, strict=True):
            if snapshot is None:
                continue
            self._notify_snapshot(source, snapshot)
            status = self.serials.status_for(source.name, snapshot.serial) if self.serials else 0
            first = start
            if self.disk_full_since is not None or self.clock_gap:  # span what was missed
                first, status = await self._span(snapshot.serial, start, end, status)
            template = self._template(source, snapshot, first, end, sync, status)
            if template is not None:
                entries.append(CycleEntry(template.meter, end, self._signer_for(template)))
        try:
            seqs = (await self.outbox.append_cycle(entries, now=int(self.clock.now()))
                    if entries else [])
            if self.serials is not None:
                self.serials.save()
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            self._disk_full(end, exc)
            self.cycles += 1
            return []
        if seqs:
            self.clock_gap = False
        if self.disk_full_since is not None and seqs:
            log.warning("event=disk_space_back device=%s first_missed_end=%d spanned_to=%d",
                        self.device, self.disk_full_since, end)
            self.on_alarm("disk-full-recovered", f"intervals from {self.disk_full_since} to {end}"
                          " signed as one reading per meter spanning the gap")
            self.disk_full_since = None
            self.metrics.disk_full.set(0)
        self.cycles += 1
        self.metrics.readings_signed.inc(len(seqs))
        self.metrics.outbox_depth.set(await self.outbox.depth())
        log.info(
            "event=cycle device=%s interval_end=%d meters=%d read=%d stored=%d seqs=%s",
            self.device,
            end,
            len(self.sources),
            len(entries),
            len(seqs),
            f"{seqs[0]}-{seqs[-1]}" if seqs else "-",
        )
        if seqs:
            self.on_cycle()
        return seqs

    async def _span(self, meter: str, start: int, end: int, status: int) -> tuple[int, int]:
        """The start of a meter's first reading after a full disk: its previous reading's end
        (at most a day back), flagged SPANS_GAP; ``start`` if it missed nothing."""
        last = await self.outbox.last_end(meter)
        if last is None or last >= start:
            return start, status
        return max(last, end - MAX_INTERVAL_SECONDS), status | StatusFlag.SPANS_GAP

    def _disk_full(self, end: int, exc: BaseException) -> None:
        """Stay up and say so once a minute, with the fix; the cycle is signed later."""
        if self.disk_full_since is None:
            self.disk_full_since = end
        self.metrics.disk_full.set(1)
        self.metrics.disk_full_cycles.inc()
        now = self.clock.now()
        if now - self._disk_reported < CLOCK_REPORT_SECONDS:
            return
        self._disk_reported = now
        detail = (f"cannot store readings: {exc}; free space where the outbox lives (journalctl "
                  "--vacuum-size=100M, old logs, core dumps); the agent stays up and signs what "
                  "it missed, one reading per meter spanning the gap, when space returns")
        log.error("event=disk_full device=%s since_end=%d detail=%r", self.device,
                  self.disk_full_since, detail)
        self.on_alarm("disk-full", detail)

    async def _clock_fit(self, end: int) -> bool:
        """May the interval ending at ``end`` (by the gateway clock) be signed now?"""
        now = self.clock.now()
        verdict = self.judge.verdict(now)
        if verdict in (ClockVerdict.AHEAD, ClockVerdict.BEHIND):
            first = self.skipped[0] if self.skipped else end
            self.skipped = (first, end, verdict)
            self.metrics.clock_skipped.inc()
            if now - self._reported >= CLOCK_REPORT_SECONDS:
                self._reported = now
                span = self.judge.offset(now)
                detail = (f"gateway clock {verdict.value} by {span[0]:.0f}..{span[1]:.0f} s "
                          "(the backend's signed acks or the meter say so): nothing is signed "
                          "until it is right; fix its time sync (timedatectl, NTP)"
                          if span else verdict.value)
                log.error("event=clock_wrong device=%s verdict=%s interval_end=%d detail=%r",
                          self.device, verdict.value, end, detail)
                self.on_alarm(f"clock-{verdict.value}", detail)
            return False
        if self.skipped is not None:
            first, last, why = self.skipped
            self.skipped = None
            detail = (f"intervals ending {first}..{last} not signed: the gateway clock was "
                      f"{why.value}; the next reading of each meter spans from its last one")
            log.warning("event=clock_gap device=%s first_end=%d last_end=%d why=%s",
                        self.device, first, last, why.value)
            self.on_alarm("clock-gap", detail)
            self.clock_gap = True
        if verdict is ClockVerdict.OK:
            rewound = await self.outbox.rewind_progress(int(now) + MAX_FUTURE_SECONDS,
                                                        end - self.interval)
            for meter, last_end in sorted(rewound.items()):
                detail = (f"meter {meter}: readings up to {last_end} were signed while the clock "
                          f"ran {last_end - end} s ahead (the backend refuses them as 'future');"
                          f" signing goes on from the interval ending {end}")
                log.warning("event=clock_rewound device=%s meter=%s last_end=%d now_end=%d",
                            self.device, meter, last_end, end)
                self.on_alarm("clock-rewound", detail)
        return True

    def _notify_snapshot(self, source: MeterSource, snapshot: MeterSnapshot) -> None:
        try:
            self.on_snapshot(source, snapshot)
        except Exception as exc:  # noqa: BLE001 - a live view must never stop signing
            log.warning("event=snapshot_hook_failed meter=%s error=%r", source.name, exc)

    async def _read(self, source: MeterSource) -> MeterSnapshot | None:
        try:
            return await source.read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one meter's failure must never stop the others
            kind = type(exc).__name__
            self.metrics.meter_read_errors.labels(meter=source.name, kind=kind).inc()
            detail = exc.diagnostics() if hasattr(exc, "diagnostics") else str(exc)
            log.warning(
                "event=meter_read_failed meter=%s kind=%s detail=%r", source.name, kind, detail
            )
            return None

    def _template(
        self, source: MeterSource, snapshot: MeterSnapshot, start: int, end: int, sync: ClockSync,
        status: int = 0,
    ) -> Reading | None:
        """The reading with seq 1, validated now: a meter's bad values fail this meter only."""
        try:
            return energy_reading(self.device, self.key_id, snapshot.serial, start, end,
                                  snapshot.import_wh, snapshot.export_wh, sync, status)
        except MeterchainError as exc:
            self.metrics.meter_read_errors.labels(meter=source.name, kind="invalid").inc()
            log.warning(
                "event=meter_values_invalid meter=%s detail=%r", source.name, exc.diagnostics()
            )
            return None

    def _signer_for(self, template: Reading) -> Callable[[int], bytes]:
        def sign(seq: int) -> bytes:
            return sign_reading(replace(template, seq=seq), self.signer).to_cbor()

        return sign
