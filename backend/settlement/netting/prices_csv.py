"""Import time-varying prices (hourly tariffs, day-ahead prices) from CSV text, exactly.

Pure: text in, `PriceSchedule` out. Each row is `start,price`: `start` is UTC integer seconds or
ISO 8601 with an explicit offset (a naive local time is ambiguous on DST days and is refused);
`price` is a decimal in the given unit, converted exactly to µ€/kWh (a value finer than 1 µ€/kWh is
refused rather than rounded). `;`-separated files may use a decimal comma. A header row is allowed.
Every bad row raises `PriceDataError` naming its line.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal, InvalidOperation

from .errors import PriceDataError
from .model import MAX_PRICE, PriceSchedule

# µ€/kWh per unit of each supported unit
UNITS = {
    "EUR/MWh": Decimal(1000),
    "EUR/kWh": Decimal(1_000_000),
    "ct/kWh": Decimal(10_000),
    "uEUR/kWh": Decimal(1),
}


def _parse_time(text: str, line: int) -> int:
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
    else:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise PriceDataError("unreadable timestamp", line=line, value=text) from exc
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise PriceDataError("timestamp without a UTC offset is ambiguous", line=line,
                                 value=text)
        value = int(moment.timestamp())
        if moment.microsecond:
            raise PriceDataError("timestamp has fractional seconds", line=line, value=text)
    if value < 0:
        raise PriceDataError("timestamp before 1970", line=line, value=text)
    return value


def _parse_price(text: str, scale: Decimal, decimal_comma: bool, line: int) -> int:
    raw = text.strip()
    if decimal_comma:
        raw = raw.replace(".", "").replace(",", ".") if "," in raw else raw
    try:
        value = Decimal(raw) * scale
    except InvalidOperation as exc:
        raise PriceDataError("unreadable price", line=line, value=text) from exc
    if not value.is_finite() or value != value.to_integral_value():
        raise PriceDataError("price is not a whole number of µ€/kWh", line=line, value=text)
    micro = int(value)
    if abs(micro) > MAX_PRICE:
        raise PriceDataError("price outside ±10 €/kWh", line=line, value=text)
    return micro


def parse_price_csv(text: str, *, unit: str = "EUR/MWh", resolution_seconds: int = 3600,
                    interval_seconds: int = 900) -> PriceSchedule:
    """Parse `text` into a schedule ending one resolution after the last row.

    Rows may come in any order; a repeated start is an error. Starts must lie on the interval grid
    so every settlement interval has exactly one price.
    """
    if unit not in UNITS:
        raise PriceDataError("unknown price unit", unit=unit, known=sorted(UNITS))
    if resolution_seconds <= 0 or resolution_seconds % interval_seconds:
        raise PriceDataError("resolution must be a multiple of the interval",
                             resolution_seconds=resolution_seconds,
                             interval_seconds=interval_seconds)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = ";" if ";" in first else ","
    rows: dict[int, int] = {}
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        numbered = list(enumerate(reader, start=1))
    except csv.Error as exc:  # e.g. a bare carriage return inside a row
        raise PriceDataError("unreadable CSV", line=reader.line_num, reason=str(exc)) from None
    for line, row in numbered:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise PriceDataError("expected two columns: start, price", line=line, cells=len(row))
        if line == 1 and not any(ch.isdigit() for ch in row[1]):
            continue  # header
        start = _parse_time(row[0], line)
        if start % interval_seconds:
            raise PriceDataError("start is not on the interval grid", line=line, start=start)
        if start in rows:
            raise PriceDataError("repeated start", line=line, start=start)
        rows[start] = _parse_price(row[1], UNITS[unit], delimiter == ";", line)
    if not rows:
        raise PriceDataError("no price rows")
    starts = sorted(rows)
    return PriceSchedule(tuple((s, rows[s]) for s in starts), end=starts[-1] + resolution_seconds)
