"""Charts that tell the truth: a value, no data and not yet look different; bars link to proofs."""

from __future__ import annotations

import re

from meterchain.backend.web import series
from meterchain.backend.web.charts import ChartSpec, bar_chart
from meterchain.backend.web.series import Slot

SPEC = ChartSpec("house", "import", "consumption", "export")
T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def _groups(svg: str) -> list[str]:
    return re.findall(r'<g class="slot[^"]*".*?</g>', svg)


def test_zero_no_data_and_not_yet_are_three_different_drawings() -> None:
    slots = [Slot(T0, T0 + 900, 0, 0, device="gw-1", seq=7),  # measured: nothing used
             Slot(T0 + 900, T0 + 1800, None, None),  # past, nothing stored
             Slot(T0 + 1800, T0 + 2700, None, None)]  # still to come
    svg = bar_chart(slots, SPEC, "UTC", now=T0 + 1800)
    zero, missing, future = _groups(svg)
    assert 'class="slot"' in zero and "consumption 0.000 kWh" in zero and 'class="imp"' in zero
    assert "slot missing" in missing and "no data" in missing and 'fill="url(#nodata)"' in missing
    assert "slot future" in future and "not yet" in future and "<rect" not in future


def test_a_period_without_any_data_says_so_instead_of_an_axis_of_one_watt_hour() -> None:
    svg = bar_chart([Slot(T0 + i * 900, T0 + (i + 1) * 900, None, None) for i in range(96)],
                    SPEC, "UTC", now=T0 + 10 * 86_400)
    assert "no data for this period" in svg
    assert "1 Wh" not in svg and "−1 Wh" not in svg
    with_data = bar_chart([Slot(T0, T0 + 900, 120, 0)], SPEC, "UTC", now=T0 + 900)
    assert "no data for this period" not in with_data and "200 Wh" in with_data


def test_each_measured_bar_links_to_its_proof_and_a_gap_links_nowhere() -> None:
    slots = [Slot(T0, T0 + 900, 80, 5, device="gw-0001", seq=41),
             Slot(T0 + 900, T0 + 1800, None, None)]

    def link(slot: Slot) -> str | None:
        return f"/proof/{slot.device}/{slot.seq}"

    measured, gap = _groups(bar_chart(slots, SPEC, "UTC", now=T0 + 1800, link=link))
    assert '<a href="/proof/gw-0001/41">' in measured and "click for its proof" in measured
    assert 'class="hit"' in measured  # the whole column is the click target, even at 0 Wh
    assert "<a " not in gap


def test_estimated_intervals_are_marked_in_the_chart() -> None:
    svg = bar_chart([Slot(T0, T0 + 900, 250, 0, substituted=True)], SPEC, "UTC", now=T0 + 900)
    (group,) = _groups(svg)
    assert "substituted" in group and "estimated" in group


def test_coverage_counts_past_slots_with_and_without_data() -> None:
    slots = [Slot(T0, T0 + 900, 0, 0), Slot(T0 + 900, T0 + 1800, None, None),
             Slot(T0 + 1800, T0 + 2700, None, None)]
    cov = series.coverage(slots, now=T0 + 1800)
    assert (cov.with_data, cov.past, cov.missing) == (1, 2, 1)
    assert series.coverage(slots[1:2], now=T0 + 1800).with_data == 0


def test_quarter_hours_carry_the_reading_that_closed_each_interval() -> None:
    intervals = [series.Interval(T0, 100, 0, False, "gw-0002", 12)]
    slot, empty = series.quarter_hours(intervals, T0, T0 + 1800)
    assert (slot.device, slot.seq) == ("gw-0002", 12)
    assert (empty.device, empty.seq, empty.import_wh) == (None, None, None)


def test_a_late_interval_is_marked_above_its_bar() -> None:
    slots = series.quarter_hours([series.Interval(T0, 90, 0, False, "gw-1", 3),
                                  series.Interval(T0 + 900, 80, 0, False, "gw-1", 4)],
                                 T0, T0 + 1800, late={T0 + 900})
    assert [s.late for s in slots] == [False, True]
    on_time, late = _groups(bar_chart(slots, SPEC, "UTC", now=T0 + 1800))
    assert "late" not in on_time and 'class="late-mark"' not in on_time
    assert "slot late" in late and 'class="late-mark"' in late
    assert "a reading came after the settlement deadline" in late
