"""From stored readings to what a household's charts show (pure code, no I/O).

A reading carries cumulative registers at its interval's end; an interval's energy is the
difference to the previous reading of the same meter. That arithmetic is the netting engine's
(``netting.energy``: gaps are spread evenly and flagged substituted, registers never run
backwards), so the dashboard and the bill can never disagree about a quarter hour. A meter
exchange starts a new track: the new meter's first reading is its baseline.

Periods are local calendar days, weeks (Monday first) and months in the household's time zone, as
UTC ranges; a DST day has 92 or 100 quarter hours (``netting.calendar``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from meterchain.backend.settlement.netting import calendar
from meterchain.backend.settlement.netting.energy import (
    MeterTrack,
    RegisterReading,
    advance,
    start_track,
)
from meterchain.backend.settlement.netting.errors import NettingError
from meterchain.backend.settlement.netting.model import Quality
from meterchain.backend.store.records import ReadingRow

INTERVAL_SECONDS = 900
PERIODS = ("day", "week", "month")
#: How far before a period readings are fetched, to find the baseline of its first interval.
LOOKBACK_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class Interval:
    """The energy of one metering point in [start, start + interval)."""

    start: int
    import_wh: int
    export_wh: int
    substituted: bool  # spread over a gap in the readings, not measured for this interval alone
    device: str  # the reading that closed it: its proof is the interval's proof
    seq: int


@dataclass(frozen=True, slots=True)
class Slot:
    """One bar of a chart: ``None`` where nothing was measured."""

    start: int
    end: int
    import_wh: int | None
    export_wh: int | None
    substituted: bool = False
    device: str | None = None  # the reading that closed the interval: its proof (quarter hours)
    seq: int | None = None
    late: bool = False  # settled again: a reading came in after the settlement deadline


@dataclass(frozen=True, slots=True)
class Period:
    kind: str  # "day", "week", "month"
    first_day: dt.date
    start: int  # UTC seconds, local midnight
    end: int
    zone: str

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.first_day.strftime("%A %-d %B %Y")
        if self.kind == "week":
            last = self.first_day + dt.timedelta(days=6)
            return f"week {self.first_day.isocalendar().week}: {self.first_day:%-d %b} – {last:%-d %b %Y}"
        return self.first_day.strftime("%B %Y")

    @property
    def key(self) -> str:
        return self.first_day.isoformat() if self.kind != "month" else self.first_day.strftime("%Y-%m")

    def shifted(self, steps: int) -> Period:
        """The previous (-1) or next (+1) period of the same kind."""
        if self.kind == "day":
            return period("day", self.first_day + dt.timedelta(days=steps), self.zone)
        if self.kind == "week":
            return period("week", self.first_day + dt.timedelta(days=7 * steps), self.zone)
        months = self.first_day.year * 12 + self.first_day.month - 1 + steps
        return period("month", dt.date(months // 12, months % 12 + 1, 1), self.zone)

    def days(self) -> list[tuple[dt.date, int, int]]:
        """Each local day of the period with its UTC bounds."""
        out: list[tuple[dt.date, int, int]] = []
        day = self.first_day
        while True:
            start, end = calendar.local_day_bounds(day, self.zone)
            if start >= self.end:
                return out
            out.append((day, start, end))
            day += dt.timedelta(days=1)


def period(kind: str, day: dt.date, zone: str) -> Period:
    """The day, week (Monday first) or month containing ``day``, in ``zone``."""
    if kind == "day":
        first, last = day, day + dt.timedelta(days=1)
    elif kind == "week":
        first = day - dt.timedelta(days=day.weekday())
        last = first + dt.timedelta(days=7)
    elif kind == "month":
        first = day.replace(day=1)
        last = dt.date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    else:
        raise ValueError(f"period kind must be one of {PERIODS}")
    start = calendar.local_day_bounds(first, zone)[0]
    end = calendar.local_day_bounds(last, zone)[0]
    return Period(kind, first, start, end, zone)


def parse_period(kind: str, key: str, zone: str) -> Period:
    """``day``/``week`` + ``YYYY-MM-DD`` or ``month`` + ``YYYY-MM``; ValueError if malformed."""
    if kind not in PERIODS:
        raise ValueError(f"period kind must be one of {PERIODS}")
    day = dt.date.fromisoformat(key + "-01" if kind == "month" and len(key) == 7 else key)
    if not 2000 <= day.year <= 2200:
        raise ValueError("year out of range")
    return period(kind, day, zone)


def today(now: int, zone: str) -> dt.date:
    return dt.datetime.fromtimestamp(now, ZoneInfo(zone)).date()


def interval_energy(readings: Iterable[ReadingRow], interval: int = INTERVAL_SECONDS
                    ) -> list[Interval]:
    """Energy per interval of one metering point, from its readings ordered by ``end``.

    One track per (device, meter): a reading off the interval grid, or one the engine refuses (a
    register that runs backwards), starts a new track rather than inventing energy.
    """
    tracks: dict[tuple[str, str], MeterTrack] = {}
    out: dict[int, Interval] = {}
    for row in readings:
        key = (row.device, row.meter)
        register = RegisterReading("point", row.end, row.meter, row.import_wh, row.export_wh)
        try:
            track = tracks.get(key)
            if track is None:
                tracks[key] = start_track(register, interval)
                continue
            tracks[key], intervals, starts = advance(track, register, interval)
        except NettingError:
            tracks.pop(key, None)
            continue
        for start, part in zip(starts, intervals, strict=True):
            out[start] = Interval(start, part.import_wh, part.export_wh,
                                  part.quality != Quality.MEASURED, row.device, row.seq)
    return [out[s] for s in sorted(out)]


def quarter_hours(intervals: Sequence[Interval], start: int, end: int,
                  interval: int = INTERVAL_SECONDS, late: Set[int] = frozenset()) -> list[Slot]:
    """One slot per interval of [start, end) (92, 96 or 100 for a local day); ``late``: the
    interval starts settled again after a late reading."""
    by_start = {i.start: i for i in intervals}
    slots = []
    for s in range(start, end, interval):
        found = by_start.get(s)
        slots.append(Slot(s, s + interval, None, None) if found is None else
                      Slot(s, s + interval, found.import_wh, found.export_wh, found.substituted,
                           found.device, found.seq, s in late))
    return slots


def daily(intervals: Sequence[Interval], days: Sequence[tuple[dt.date, int, int]]) -> list[Slot]:
    """One slot per local day: the sums of its intervals (None for a day without any)."""
    slots = []
    for _, start, end in days:
        inside = [i for i in intervals if start <= i.start < end]
        if not inside:
            slots.append(Slot(start, end, None, None))
            continue
        slots.append(Slot(start, end, sum(i.import_wh for i in inside),
                          sum(i.export_wh for i in inside), any(i.substituted for i in inside)))
    return slots


def combine(series: Sequence[Sequence[Slot]]) -> list[Slot]:
    """Slot-wise sums of several equally shaped series (None only where all are None)."""
    out = []
    for column in zip(*series, strict=True):
        imports = [s.import_wh for s in column if s.import_wh is not None]
        exports = [s.export_wh for s in column if s.export_wh is not None]
        out.append(Slot(column[0].start, column[0].end, sum(imports) if imports else None,
                        sum(exports) if exports else None, any(s.substituted for s in column)))
    return out


def total(slots: Iterable[Slot]) -> tuple[int, int]:
    """(import Wh, export Wh) over the slots that have values."""
    imp = exp = 0
    for slot in slots:
        imp += slot.import_wh or 0
        exp += slot.export_wh or 0
    return imp, exp


@dataclass(frozen=True, slots=True)
class Coverage:
    """How many of a period's past slots have data: a total over 3 of 96 quarter hours is not
    a day's consumption, and a period without any is "no data", never 0 kWh."""

    with_data: int
    past: int  # slots that have begun (a slot still to come is not missing)

    @property
    def missing(self) -> int:
        return self.past - self.with_data


def coverage(slots: Iterable[Slot], now: int) -> Coverage:
    with_data = past = 0
    for slot in slots:
        if slot.start < now:
            past += 1
            with_data += slot.import_wh is not None or slot.export_wh is not None
    return Coverage(with_data, past)

