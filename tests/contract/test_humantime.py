"""Times for people: local with zone, intervals with both ends apart, ISO 8601 for machines."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from meterchain.contract.humantime import human_ago, human_duration, human_interval, human_time, iso

from tests.support.humantime import unix_seconds_in

BERLIN = ZoneInfo("Europe/Berlin")
T = int(dt.datetime(2026, 12, 6, 21, 49, 30, tzinfo=BERLIN).timestamp())


def test_a_time_is_local_with_its_zone() -> None:
    assert human_time(T, BERLIN) == "Sun 6 Dec 2026 21:49:30 CET"
    assert human_time(T, "UTC", seconds=False) == "Sun 6 Dec 2026 20:49 UTC"
    assert human_time(None) == "never"
    assert unix_seconds_in(human_time(T)) == []


def test_an_interval_keeps_start_and_end_apart() -> None:
    assert human_interval(T, T + 10, BERLIN) == "Sun 6 Dec 2026 21:49:30 – 21:49:40 CET"
    start = T - 30
    assert human_interval(start, start + 900, BERLIN) == "Sun 6 Dec 2026 21:49 – 22:04 CET"
    assert human_interval(start, start + 86400, BERLIN) == (
        "Sun 6 Dec 2026 21:49 CET – Mon 7 Dec 2026 21:49 CET")


def test_machines_get_iso_8601() -> None:
    assert iso(T) == "2026-12-06T20:49:30+00:00"
    assert iso(T, BERLIN) == "2026-12-06T21:49:30+01:00"
    assert iso(None) is None


def test_durations_in_units() -> None:
    assert [human_duration(s) for s in (0, 45, 725, 12000, 187200, -4)] == [
        "0 s", "45 s", "12 min 5 s", "3 h 20 min", "2 d 4 h", "-4 s"]
    assert human_ago(T - 300, T, BERLIN) == "Sun 6 Dec 2026 21:44:30 CET (5 min ago)"


def test_the_scanner_finds_unix_seconds_and_nothing_else() -> None:
    assert unix_seconds_in("already used at 1796591065 for gw-1") == ["1796591065"]
    assert unix_seconds_in("[1796590170, 1796590180)") == ["1796590170", "1796590180"]
    assert unix_seconds_in("<td data-t='1796590170'>gw-1796590170 #1796590170 12345</td>") == []
