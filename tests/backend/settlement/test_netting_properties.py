"""Property tests of the netting engine: the invariants of docs/netting.md, exactly.

A short seeded hypothesis run always; `slow` runs 10^5 random intervals (numpy-seeded) with the same
independent checks.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterchain.backend.settlement.netting import (
    Community,
    Fees,
    IntervalInput,
    Listing,
    PriceSchedule,
    Rule,
    settle_interval,
)

from tests.support.netting_checks import check_result, settle_checked

FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

energy = st.one_of(st.just(0), st.integers(0, 20), st.integers(0, 10_000_000))
prices = st.integers(-200_000, 5_000_000)


@st.composite
def communities(draw: st.DrawFn) -> Community:
    a, b = draw(prices), draw(prices)
    rule = draw(st.sampled_from(list(Rule)))
    fees = Fees(
        local_network_per_kwh=draw(st.integers(0, 100_000)),
        grid_network_per_kwh=draw(st.integers(0, 100_000)),
        platform_per_kwh=draw(st.integers(0, 20_000)),
        monthly_fee=draw(st.integers(0, 10_000_000)),
        vat_basis_points=draw(st.integers(0, 2_500)),
    )
    return Community(
        "c", PriceSchedule.fixed(max(a, b)), PriceSchedule.fixed(min(a, b)), fees, rule,
        fixed_price=draw(prices) if rule is Rule.FIXED else None,
        co2_grams_per_kwh=draw(st.integers(0, 1000)),
    )


@st.composite
def intervals(draw: st.DrawFn) -> IntervalInput:
    n = draw(st.integers(1, 12))
    profiles = draw(st.lists(st.tuples(energy, energy), min_size=1, max_size=4))
    rows = [draw(st.sampled_from(profiles)) for _ in range(n)]  # repeats make identical members
    side = draw(st.sampled_from(["both", "buyers only", "sellers only"]))
    if side == "buyers only":
        rows = [(i, 0) for i, _ in rows]
    elif side == "sellers only":
        rows = [(0, e) for _, e in rows]
    ids = draw(st.permutations([f"m{k:03d}" for k in range(n)]))
    start = 900 * draw(st.integers(0, 10**8))
    return IntervalInput.from_columns(start, ids, [r[0] for r in rows], [r[1] for r in rows])


@st.composite
def listing_books(draw: st.DrawFn, ids: tuple[str, ...]) -> dict[str, Listing]:
    book = {}
    for member in ids:
        if draw(st.booleans()):
            book[member] = Listing(
                member,
                buy_limit=draw(st.none() | prices),
                sell_ask=draw(st.none() | prices),
                green_source=draw(st.booleans()),
                green_only=draw(st.booleans()),
                partner_group=draw(st.none() | st.sampled_from(["house-1", "house-2"])),
            )
    return book


@FAST
@given(communities(), intervals())
def test_prorata_invariants(community: Community, inp: IntervalInput) -> None:
    settle_checked(community, inp)


@FAST
@given(communities(), intervals(), st.data())
def test_auction_invariants(community: Community, inp: IntervalInput, data: st.DataObject) -> None:
    book = data.draw(listing_books(inp.member_ids))
    settle_checked(community, inp, book)


@FAST
@given(communities(), intervals(), st.randoms(use_true_random=False), st.booleans(), st.data())
def test_same_input_in_any_order_gives_the_same_digest(
    community: Community, inp: IntervalInput, rnd: random.Random, with_book: bool,
    data: st.DataObject,
) -> None:
    book = data.draw(listing_books(inp.member_ids)) if with_book else None
    order = list(range(len(inp.member_ids)))
    rnd.shuffle(order)
    shuffled = IntervalInput.from_columns(
        inp.interval_start, [inp.member_ids[i] for i in order], inp.import_wh[order],
        inp.export_wh[order], inp.quality[order])
    reordered_book = None if book is None else dict(reversed(list(book.items())))
    a = settle_interval(community, inp, book)
    b = settle_interval(community, shuffled, reordered_book)
    assert a.digest == b.digest


def _random_interval(rng: np.random.Generator, start: int) -> IntervalInput:
    n = int(rng.choice([1, 2, 3, 4, 6, 10]))
    kind = rng.integers(0, 6)
    if kind == 0:  # identical members
        imp = np.full(n, rng.integers(0, 5000))
        exp = np.full(n, rng.integers(0, 5000))
    else:
        scale = int(rng.choice([3, 1000, 10_000_000]))
        imp = rng.integers(0, scale, n) * (rng.random(n) < 0.7)
        exp = rng.integers(0, scale, n) * (rng.random(n) < 0.4)
    if kind == 1:
        exp[:] = 0
    elif kind == 2:
        imp[:] = 0
    return IntervalInput.from_columns(start, [f"m{k}" for k in range(n)], imp, exp)


@pytest.mark.slow
# CPU-bound: 89 s of CPU, 12 min of wall time at load 14-15 (the suite's 120 s default timed it out)
@pytest.mark.timeout(1800)
def test_hundred_thousand_random_intervals() -> None:
    """10^5 intervals over a year of quarter hours with DST-independent UTC grid, all rules."""
    rng = np.random.default_rng(20240331)
    communities_by_rule = {}
    for rule in Rule:
        communities_by_rule[rule] = Community(
            "c", PriceSchedule.fixed(300_001), PriceSchedule.fixed(80_000),
            Fees(10_000, 60_000, 5_003, 2_000_000, 1_900), rule,
            fixed_price=150_007 if rule is Rule.FIXED else None, co2_grams_per_kwh=380)
    rules = list(Rule)
    for k in range(100_000):
        inp = _random_interval(rng, 900 * k)
        community = communities_by_rule[rules[k % 3]]
        book = None
        if k % 10 == 9:
            book = {m: Listing(m, buy_limit=int(rng.integers(50_000, 350_000)),
                               sell_ask=int(rng.integers(50_000, 350_000)),
                               green_source=bool(rng.random() < 0.5),
                               green_only=bool(rng.random() < 0.2))
                    for m in inp.member_ids if rng.random() < 0.6}
        result = settle_interval(community, inp, book)
        check_result(community, inp, result, book, audit_digest=k % 50 == 0)
