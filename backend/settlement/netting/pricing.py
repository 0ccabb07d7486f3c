"""Local price rules for pro-rata netting; every result lies in [p_f, p_g].

* Mid-market (Long et al. 2017): p_m = (p_g + p_f) / 2, rounded half-even to 1 µ€/kWh.
* Supply-demand ratio (Liu et al. 2017, "Energy sharing model with price-based demand response for
  microgrids of peer-to-peer prosumers"): with SDR = S / D,
  for 0 ≤ SDR ≤ 1: P_sell = p_g·p_f / ((p_g − p_f)·SDR + p_f) and P_buy = P_sell·SDR + p_g·(1 − SDR);
  for SDR > 1 (or D = 0): P_sell = P_buy = p_f.
  P_buy is the paper's average price over a buyer's whole demand: local kWh at P_sell plus grid kWh
  at p_g. Our lines already split local and grid energy, so the local price is P_sell and the blend
  P_buy appears by itself on the bill. Computed exactly as the fraction p_g·p_f·D / ((p_g − p_f)·S
  + p_f·D), rounded half-even once. The formula assumes 0 < p_f; where p_f ≤ 0 (negative dynamic
  feed-in prices) the interval falls back to mid-market and says so in its tier name.
* Fixed community price, clamped to [p_f, p_g] in each interval.
"""

from __future__ import annotations

from .model import Rule
from .rounding import div_half_even


def mid_market_price(retail: int, feed_in: int) -> int:
    return div_half_even(retail + feed_in, 2)


def supply_demand_ratio_price(retail: int, feed_in: int, supply_wh: int, demand_wh: int) -> int:
    """Liu et al.'s P_sell for SDR = supply/demand; requires 0 < feed_in ≤ retail."""
    if demand_wh == 0 or supply_wh >= demand_wh:
        return feed_in
    denominator = (retail - feed_in) * supply_wh + feed_in * demand_wh
    return div_half_even(retail * feed_in * demand_wh, denominator)


def sdr_blended_buy_price(retail: int, feed_in: int, supply_wh: int, demand_wh: int) -> int:
    """The paper's P_buy (informational): what a buyer pays on average per kWh of demand."""
    if demand_wh == 0 or supply_wh >= demand_wh:
        return feed_in
    sell = supply_demand_ratio_price(retail, feed_in, supply_wh, demand_wh)
    return div_half_even(sell * supply_wh + retail * (demand_wh - supply_wh), demand_wh)


def local_price(
    rule: Rule, retail: int, feed_in: int, supply_wh: int, demand_wh: int,
    fixed_price: int | None = None,
) -> tuple[int, str]:
    """(price, tier name) of a pro-rata interval under a community's rule."""
    if rule is Rule.FIXED:
        assert fixed_price is not None  # Community validates this
        return min(max(fixed_price, feed_in), retail), "prorata:fixed"
    if rule is Rule.SUPPLY_DEMAND_RATIO:
        if feed_in > 0:
            return supply_demand_ratio_price(retail, feed_in, supply_wh, demand_wh), "prorata:sdr"
        return mid_market_price(retail, feed_in), "prorata:sdr-fallback-mid_market"
    return mid_market_price(retail, feed_in), "prorata:mid_market"
