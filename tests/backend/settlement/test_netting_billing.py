"""Re-settlement as delta lines, monthly bills, DST days, and a month of rounding."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from meterchain.backend.settlement.netting import (
    BillBuilder,
    Community,
    Fees,
    IntervalInput,
    MemberInterval,
    PriceSchedule,
    Quality,
    Readiness,
    ResettlementError,
    interval_starts,
    local_day_bounds,
    local_month_bounds,
    readiness,
    resettle,
    settle_interval,
    with_missing,
)

from tests.support.netting_checks import check_result, settle_checked

FEES = Fees(local_network_per_kwh=20_000, grid_network_per_kwh=60_000, platform_per_kwh=5_001,
            monthly_fee=2_500_000, vat_basis_points=1_900)
COMMUNITY = Community("c", PriceSchedule.fixed(300_001), PriceSchedule.fixed(80_003), FEES,
                      co2_grams_per_kwh=380)


@pytest.mark.parametrize("day,count", [(dt.date(2024, 3, 31), 92), (dt.date(2024, 10, 27), 100),
                                       (dt.date(2024, 6, 1), 96)])
def test_dst_days_have_92_or_100_quarter_hours(day: dt.date, count: int) -> None:
    start, end = local_day_bounds(day, "Europe/Berlin")
    assert len(interval_starts(start, end, 900)) == count


@pytest.mark.parametrize("day", [dt.date(2024, 3, 31), dt.date(2024, 10, 27)])
def test_a_dst_day_settles_and_bills_exactly(day: dt.date) -> None:
    start, end = local_day_bounds(day, "Europe/Berlin")
    rng = np.random.default_rng(day.toordinal())
    builder = BillBuilder(COMMUNITY, start, end)
    ids = [f"m{k}" for k in range(7)]
    for t in interval_starts(start, end, 900):
        inp = IntervalInput.from_columns(t, ids, rng.integers(0, 400, 7) * (rng.random(7) < .8),
                                         rng.integers(0, 900, 7) * (rng.random(7) < .3))
        builder.add(settle_checked(COMMUNITY, inp))
    bills = builder.bills()
    for bill in bills.values():
        assert sum(line.amount for line in bill.lines) == bill.total
        e = bill.energy
        assert e["bought_local_wh"] + e["bought_grid_wh"] == e["import_wh"]
        assert e["sold_local_wh"] + e["sold_grid_wh"] == e["export_wh"]
    assert sum(b.energy["bought_local_wh"] for b in bills.values()) == sum(
        b.energy["sold_local_wh"] for b in bills.values())


def test_bill_lines_worked_example() -> None:
    start = 1_700_000_100 - 1_700_000_100 % 900
    builder = BillBuilder(COMMUNITY, start, start + 3 * 900)
    for k, (a_imp, b_exp) in enumerate([(1_000, 600), (333, 1_000), (0, 0)]):
        inp = IntervalInput.from_columns(start + 900 * k, ["a", "b"], [a_imp, 0], [0, b_exp])
        builder.add(settle_checked(COMMUNITY, inp))
    a = builder.bill("a")
    lines = {line.kind: line.amount for line in a.lines}
    # local 933 Wh at the mid-market 190,002 µ€/kWh = 177,271.866 µ€ -> 177,272
    assert lines["local_energy_bought"] == 177_272
    assert lines["grid_energy"] == 120_000  # 400 Wh × 0.300001
    assert lines["platform_fee"] == 4_666  # 933 × 5,001 n€ = 4,665.933 µ€
    assert lines["monthly_fee"] == 2_500_000
    charges = (lines["local_energy_bought"] + lines["grid_energy"] + lines["local_network_fee"]
               + lines["grid_network_fee"] + lines["platform_fee"] + lines["rounding"]
               + lines["monthly_fee"])
    assert lines["vat"] == round(charges * 0.19)
    assert a.total == sum(lines.values())
    assert a.co2_avoided_g == 355  # 0.933 kWh × 380 g
    # baseline: 1,333 Wh at retail + grid fee, VAT on it
    base = round(1_333 * 360_001 / 1000)
    assert a.baseline_total == base + round(base * 0.19)
    assert a.savings == a.baseline_total - a.total


def test_a_late_reading_resettles_as_delta_lines_and_the_bill_follows() -> None:
    t0 = 900 * 1000
    expected = ["a", "b", "c", "d"]
    present = [MemberInterval("a", 500, 0), MemberInterval("b", 0, 300), MemberInterval("d", 0, 0)]
    assert readiness(expected, ["a", "b"], interval_end=t0 + 900, deadline_seconds=3600,
                     now=t0 + 1000) is Readiness.WAIT
    assert readiness(expected, ["a", "b"], interval_end=t0 + 900, deadline_seconds=3600,
                     now=t0 + 4500) is Readiness.DEADLINE
    assert readiness(expected, expected, interval_end=t0 + 900, deadline_seconds=3600,
                     now=t0 + 900) is Readiness.COMPLETE
    at_deadline = with_missing(t0, present, expected)
    assert at_deadline.quality.tolist() == [0, 0, int(Quality.MISSING), 0]
    first = settle_checked(COMMUNITY, at_deadline)
    late = IntervalInput.from_members(t0, [*present, MemberInterval("c", 0, 400)])
    second, delta = resettle(first, COMMUNITY, late)
    check_result(COMMUNITY, late, second)
    assert second.revision == 1 and second.supersedes == first.digest
    assert delta.from_digest == first.digest and delta.to_digest == second.digest
    # L goes from 300 to 500: a buys 200 Wh more locally, b's share of S falls from 300 to 214
    assert delta.member_row("a")["bought_local_wh"] == 200
    assert delta.member_row("a")["bought_grid_wh"] == -200
    assert delta.member_row("b")["sold_local_wh"] == -86
    assert delta.member_row("c")["sold_local_wh"] == 286
    assert delta.member_ids == ("a", "b", "c")  # d is unchanged: no delta line
    # old + deltas = the revision in force, in the bill as well
    via_delta = BillBuilder(COMMUNITY, t0, t0 + 900)
    via_delta.add(first)
    via_delta.add_delta(delta)
    direct = BillBuilder(COMMUNITY, t0, t0 + 900)
    direct.add(settle_interval(COMMUNITY, late))
    assert via_delta.bills() == direct.bills()
    with pytest.raises(ResettlementError):
        via_delta.add_delta(delta)  # applied twice
    with pytest.raises(ResettlementError):
        via_delta.add(second)  # a second result for a billed interval


def test_a_month_of_identical_members_favours_nobody() -> None:
    start, end = local_month_bounds(2024, 3, "Europe/Berlin")
    builder = BillBuilder(COMMUNITY, start, end)
    ids = ["p", "q", "r", "s", "t"]
    for t in interval_starts(start, end, 900):
        imp = np.array([0, 77, 77, 77, 77])  # four identical buyers
        builder.add(settle_interval(COMMUNITY, IntervalInput.from_columns(t, ids, imp,
                                                                          [101, 0, 0, 0, 0])))
    bills = [builder.bill(m) for m in ids[1:]]
    intervals = len(interval_starts(start, end, 900))
    assert intervals == 2972  # March with the spring-forward day
    local = [b.energy["bought_local_wh"] for b in bills]
    # exact share 25.25 Wh per interval; the spare Wh rotate, so totals stay near 25.25 × 2972
    assert all(abs(v - 25.25 * intervals) < 0.05 * intervals for v in local), local
    totals = [b.total for b in bills]
    assert max(totals) - min(totals) < 0.01 * max(totals)
    for b in bills:
        assert abs({line.kind: line.amount for line in b.lines}["rounding"]) <= intervals


def test_a_dst_day_with_hourly_day_ahead_prices_from_csv() -> None:
    from meterchain.backend.settlement.netting import parse_price_csv

    start, end = local_day_bounds(dt.date(2024, 3, 31), "Europe/Berlin")
    hours = range(start, end, 3600)
    assert len(hours) == 23
    rows = "\n".join(f"{t},{(-20 + 7 * k) / 100:.2f}" for k, t in enumerate(hours))
    feed_in = parse_price_csv("start,price\n" + rows, unit="ct/kWh")
    community = Community("c", PriceSchedule.fixed(320_000), feed_in, FEES, co2_grams_per_kwh=380)
    builder = BillBuilder(community, start, end)
    ids = ["a", "b", "c"]
    for k, t in enumerate(interval_starts(start, end, 900)):
        inp = IntervalInput.from_columns(t, ids, [100 + k, 0, 50], [0, 3 * k, 20])
        result = settle_checked(community, inp)
        assert result.feed_in_price == feed_in.price_at(t)
        builder.add(result)
    assert builder.bill("b").energy["export_wh"] == 3 * sum(range(92))


def test_a_gap_filled_by_the_spanning_reading_resettles_each_missing_interval() -> None:
    from meterchain.backend.settlement.netting import RegisterReading, advance, start_track

    q = 900
    t0 = q * 2000
    seller = start_track(RegisterReading("s", t0, "S1", 0, 0), q)
    buyer = start_track(RegisterReading("b", t0, "B1", 0, 0), q)
    settled = {}
    builder = BillBuilder(COMMUNITY, t0, t0 + 4 * q)
    for k in range(4):  # the buyer's meter is silent for four intervals; the seller reports
        seller, rows, starts = advance(seller, RegisterReading("s", t0 + (k + 1) * q, "S1", 0,
                                                               100 * (k + 1)), q)
        settled[starts[0]] = settle_checked(COMMUNITY, with_missing(starts[0], rows, ["b", "s"]))
        builder.add(settled[starts[0]])
    assert all(r.totals.local_wh == 0 for r in settled.values())
    buyer, rows, starts = advance(buyer, RegisterReading("b", t0 + 4 * q, "B1", 402, 0), q)
    assert sorted(r.import_wh for r in rows) == [100, 100, 101, 101]
    assert all(r.quality is Quality.SUBSTITUTED for r in rows)
    assert sum(r.import_wh for r in rows) == 402
    for start, row in zip(starts, rows, strict=True):
        old = settled[start]
        seller_row = MemberInterval("s", 0, old.member_row("s")["export_wh"])
        new, delta = resettle(old, COMMUNITY, IntervalInput.from_members(start, [row, seller_row]))
        check_result(COMMUNITY, IntervalInput.from_members(start, [row, seller_row]), new)
        assert new.member_row("b")["bought_local_wh"] == min(row.import_wh, 100)
        assert delta.member_row("b")["bought_local_wh"] == min(row.import_wh, 100)
        builder.add_delta(delta)
    bill = builder.bill("b")
    assert bill.energy["import_wh"] == 402 and bill.energy["bought_local_wh"] == 400
