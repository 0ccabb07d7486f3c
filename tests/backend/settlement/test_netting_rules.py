"""Worked examples of each rule: pricing, pro-rata splits, call auctions and preference tiers."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from meterchain.backend.settlement.netting import (
    Community,
    Fees,
    IntervalInput,
    Listing,
    PriceSchedule,
    Rule,
    clear_call_auction,
)
from meterchain.backend.settlement.netting.pricing import (
    mid_market_price,
    sdr_blended_buy_price,
    supply_demand_ratio_price,
)
from meterchain.backend.settlement.netting.rounding import largest_remainder

from tests.support.netting_checks import settle_checked

P_G, P_F = 300_000, 80_000  # 0.30 €/kWh retail, 0.08 €/kWh feed-in, in µ€/kWh


def community(rule: Rule = Rule.MID_MARKET, fixed: int | None = None, **fees: int) -> Community:
    return Community("c", PriceSchedule.fixed(P_G), PriceSchedule.fixed(P_F), Fees(**fees), rule,
                     fixed_price=fixed, co2_grams_per_kwh=400)


def test_mid_market_is_the_midpoint_rounded_half_even() -> None:
    assert mid_market_price(P_G, P_F) == 190_000
    assert mid_market_price(5, 2) == 4  # 3.5 -> 4 (even)
    assert mid_market_price(7, 2) == 4  # 4.5 -> 4 (even)
    assert mid_market_price(3, -8) == -2  # -2.5 -> -2 (even)


@pytest.mark.parametrize("supply,demand", [(0, 10), (1, 4), (1, 2), (3, 4), (999, 1000), (5, 5),
                                           (7, 5), (3, 0)])
def test_sdr_matches_liu_et_al_in_exact_arithmetic(supply: int, demand: int) -> None:
    price = supply_demand_ratio_price(P_G, P_F, supply, demand)
    if demand == 0 or supply >= demand:
        assert price == P_F
        assert sdr_blended_buy_price(P_G, P_F, supply, demand) == P_F
        return
    sdr = Fraction(supply, demand)
    sell = Fraction(P_G * P_F) / ((P_G - P_F) * sdr + P_F)
    assert price == round(sell)
    assert P_F <= price <= P_G
    buy = sell * sdr + P_G * (1 - sdr)
    assert abs(sdr_blended_buy_price(P_G, P_F, supply, demand) - buy) <= 1


def test_sdr_worked_example_and_monotonic_in_supply() -> None:
    # SDR = 1/2: P_sell = 0.3·0.08 / (0.22·0.5 + 0.08) €/kWh = 0.024 / 0.19 = 0.126315... €/kWh
    assert supply_demand_ratio_price(P_G, P_F, 500, 1000) == 126_316
    prices = [supply_demand_ratio_price(P_G, P_F, s, 100) for s in range(101)]
    assert prices == sorted(prices, reverse=True) and prices[0] == P_G and prices[-1] == P_F


def test_fixed_price_is_clamped_into_the_band() -> None:
    inp = IntervalInput.from_columns(0, ["a", "b"], [100, 0], [0, 100])
    assert settle_checked(community(Rule.FIXED, 150_000), inp).tiers[0].price == 150_000
    assert settle_checked(community(Rule.FIXED, 900_000), inp).tiers[0].price == P_G
    assert settle_checked(community(Rule.FIXED, -5), inp).tiers[0].price == P_F


def test_sdr_with_negative_feed_in_falls_back_to_mid_market() -> None:
    c = Community("c", PriceSchedule.fixed(200_000), PriceSchedule.fixed(-10_000), rule=Rule.SUPPLY_DEMAND_RATIO)
    inp = IntervalInput.from_columns(0, ["a", "b"], [100, 0], [0, 40])
    result = settle_checked(c, inp)
    assert result.tiers[0].name == "prorata:sdr-fallback-mid_market"
    assert result.tiers[0].price == 95_000


def test_prorata_worked_example() -> None:
    # D = 300 + 100 = 400, S = 150 + 50 = 200, L = 200: buyers get 150 and 50, sellers all.
    inp = IntervalInput.from_columns(900, ["buyer-a", "buyer-b", "seller-c", "seller-d"],
                                     [300, 100, 0, 0], [0, 0, 150, 50])
    r = settle_checked(community(platform_per_kwh=5_000, local_network_per_kwh=20_000,
                                 grid_network_per_kwh=60_000), inp)
    a = r.member_row("buyer-a")
    assert (a["bought_local_wh"], a["bought_grid_wh"]) == (150, 150)
    assert a["local_energy_bought"] == 150 * 190_000 // 1000 == 28_500
    assert a["grid_energy"] == 45_000 and a["grid_network_fee"] == 9_000
    assert r.member_row("seller-c")["local_energy_sold"] == 28_500
    assert r.seller_mix() == (("seller-c", 150), ("seller-d", 50))
    assert r.totals.self_sufficiency_ppm == 500_000 and r.totals.self_consumption_ppm == 1_000_000
    assert r.totals.co2_avoided_g == 80  # 0.2 kWh × 400 g/kWh


def test_identical_members_rotate_the_spare_wh_over_a_month() -> None:
    """Three identical buyers share 100 Wh: 34/33/33; who gets 34 changes with the interval."""
    ids = ["x", "y", "z"]
    winners: Counter[str] = Counter()
    for k in range(2976):  # 31 days of quarter hours
        shares = largest_remainder(100, np.array([7, 7, 7]), 900 * k, ids)
        assert sorted(shares.tolist()) == [33, 33, 34]
        winners[ids[int(np.argmax(shares))]] += 1
    assert all(abs(count - 992) < 100 for count in winners.values()), winners


def test_single_member_nets_with_itself_only_if_it_both_imports_and_exports() -> None:
    r = settle_checked(community(), IntervalInput.from_columns(0, ["solo"], [40], [25]))
    assert r.member_row("solo")["bought_local_wh"] == 25
    r = settle_checked(community(), IntervalInput.from_columns(0, ["solo"], [40], [0]))
    assert r.totals.local_wh == 0 and r.totals.self_consumption_ppm is None


def _auction(bids: list[tuple[int, int]], asks: list[tuple[int, int]]):
    n_b = len(bids)
    return clear_call_auction(
        np.arange(n_b), np.array([p for p, _ in bids]), np.array([v for _, v in bids]),
        np.arange(n_b, n_b + len(asks)), np.array([p for p, _ in asks]),
        np.array([v for _, v in asks]))


def test_call_auction_worked_example() -> None:
    # bids 30@0.28, 20@0.25, 40@0.12; asks 25@0.10, 30@0.20, 50@0.26 (µ€/kWh ×1000)
    c = _auction([(280_000, 30), (250_000, 20), (120_000, 40)],
                 [(100_000, 25), (200_000, 30), (260_000, 50)])
    # Wh 0-25 (0.28 vs 0.10), 25-30 (0.28 vs 0.20), 30-50 (0.25 vs 0.20) trade; 50-55 (0.12 vs 0.20)
    # does not: Q = 50, marginal bid 0.25, marginal ask 0.20, price 0.225.
    assert (c.volume_wh, c.price) == (50, 225_000)
    assert c.bid_fills.tolist() == [30, 20, 0] and c.ask_fills.tolist() == [25, 25, 0]
    assert c.pairs == ((0, 3, 25), (0, 4, 5), (1, 4, 20))


def test_call_auction_ties_go_by_member_order_not_arrival() -> None:
    c = _auction([(200_000, 10), (200_000, 10)], [(100_000, 15)])
    assert c.bid_fills.tolist() == [10, 5]
    reversed_arrival = clear_call_auction(np.array([1, 0]), np.array([200_000, 200_000]),
                                          np.array([10, 10]), np.array([2]),
                                          np.array([100_000]), np.array([15]))
    assert reversed_arrival.bid_fills.tolist() == [5, 10]  # member 0 is still filled first


def test_call_auction_without_crossing_trades_nothing() -> None:
    c = _auction([(100_000, 10)], [(150_000, 10)])
    assert (c.price, c.volume_wh, c.pairs) == (None, 0, ())


def test_preference_tiers_partners_then_green_then_rest() -> None:
    ids = ["buyer-green", "buyer-house", "buyer-plain", "seller-green", "seller-house", "seller-grey"]
    inp = IntervalInput.from_columns(0, ids, [50, 50, 50, 0, 0, 0], [0, 0, 0, 40, 30, 60])
    book = {
        "buyer-green": Listing("buyer-green", buy_limit=250_000, green_only=True),
        "buyer-house": Listing("buyer-house", buy_limit=220_000, partner_group="house-7"),
        "buyer-plain": Listing("buyer-plain", buy_limit=200_000),
        "seller-green": Listing("seller-green", sell_ask=120_000, green_source=True),
        "seller-house": Listing("seller-house", sell_ask=140_000, partner_group="house-7"),
        "seller-grey": Listing("seller-grey", sell_ask=90_000),
    }
    r = settle_checked(community(), inp, book)
    tiers = {t.name: t for t in r.tiers}
    assert list(tiers) == ["partners:house-7", "green", "rest"]
    assert tiers["partners:house-7"].pairs == (("buyer-house", "seller-house", 30),)
    assert tiers["partners:house-7"].price == 180_000
    assert tiers["green"].pairs == (("buyer-green", "seller-green", 40),)
    assert tiers["green"].price == 185_000
    # the rest: buyer-house (20 left, 0.22) and buyer-plain (50, 0.20) against seller-grey (60)
    assert tiers["rest"].pairs == (("buyer-house", "seller-grey", 20),
                                   ("buyer-plain", "seller-grey", 40))
    assert tiers["rest"].price == 145_000
    assert r.member_row("buyer-green")["bought_grid_wh"] == 10  # green-only: no grey energy


def test_limits_outside_the_band_never_trade_outside_it() -> None:
    inp = IntervalInput.from_columns(0, ["b", "s"], [10, 0], [0, 10])
    r = settle_checked(community(), inp, {"b": Listing("b", buy_limit=10**6),
                                          "s": Listing("s", sell_ask=-10**6)})
    assert r.tiers[0].price == 190_000
    r = settle_checked(community(), inp, {"b": Listing("b", buy_limit=P_F - 1)})
    assert r.tiers == () and r.totals.local_wh == 0
