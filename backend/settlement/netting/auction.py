"""Uniform-price call auction over integer Wh, vectorised with numpy.

Bids are sorted by price descending, asks ascending, equal prices by member index (members are
sorted by id, so the order never depends on arrival). Walking both books together, the q-th Wh is
tradable while the bid covering it is ≥ the ask covering it; because bid prices only fall and ask
prices only rise along q, the tradable Wh form a prefix [0, Q). The price is the midpoint of the
marginal (last matched) bid and ask, rounded half-even, so every filled buyer's limit ≥ price ≥
every filled seller's ask. Each segment between consecutive cumulative volumes belongs to one bid
and one ask: those are the matched (buyer, seller, Wh) pairs, at most buyers + sellers − 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rounding import div_half_even


@dataclass(frozen=True, eq=False)
class Clearing:
    price: int | None  # None when nothing trades
    volume_wh: int
    bid_fills: np.ndarray  # Wh per bid, aligned with the bids given
    ask_fills: np.ndarray  # Wh per ask
    pairs: tuple[tuple[int, int, int], ...]  # (bidder index, asker index, Wh)


def clear_call_auction(
    bidders: np.ndarray, bid_prices: np.ndarray, bid_wh: np.ndarray,
    askers: np.ndarray, ask_prices: np.ndarray, ask_wh: np.ndarray,
) -> Clearing:
    """Clear one auction; indices name members (their order breaks price ties)."""
    bid_fills = np.zeros(bid_wh.shape, np.int64)
    ask_fills = np.zeros(ask_wh.shape, np.int64)
    live_bids = np.flatnonzero(bid_wh > 0)
    live_asks = np.flatnonzero(ask_wh > 0)
    if live_bids.size == 0 or live_asks.size == 0:
        return Clearing(None, 0, bid_fills, ask_fills, ())
    b_order = live_bids[np.lexsort((bidders[live_bids], -bid_prices[live_bids]))]
    a_order = live_asks[np.lexsort((askers[live_asks], ask_prices[live_asks]))]
    b_cum = np.cumsum(bid_wh[b_order])
    a_cum = np.cumsum(ask_wh[a_order])
    horizon = min(int(b_cum[-1]), int(a_cum[-1]))
    ends = np.union1d(b_cum[b_cum <= horizon], a_cum[a_cum <= horizon])
    starts = np.concatenate(([0], ends[:-1]))
    seg_bid = np.searchsorted(b_cum, starts, side="right")
    seg_ask = np.searchsorted(a_cum, starts, side="right")
    tradable = bid_prices[b_order[seg_bid]] >= ask_prices[a_order[seg_ask]]
    count = int(np.argmin(tradable)) if not tradable.all() else tradable.size
    if count == 0:
        return Clearing(None, 0, bid_fills, ask_fills, ())
    volume = int(ends[count - 1])
    marginal_bid = int(bid_prices[b_order[seg_bid[count - 1]]])
    marginal_ask = int(ask_prices[a_order[seg_ask[count - 1]]])
    price = div_half_even(marginal_bid + marginal_ask, 2)
    bid_fills[b_order] = np.clip(volume - (b_cum - bid_wh[b_order]), 0, bid_wh[b_order])
    ask_fills[a_order] = np.clip(volume - (a_cum - ask_wh[a_order]), 0, ask_wh[a_order])
    sizes = (ends[:count] - starts[:count]).tolist()
    pairs = tuple(zip(bidders[b_order[seg_bid[:count]]].tolist(),
                      askers[a_order[seg_ask[:count]]].tolist(), sizes, strict=True))
    return Clearing(price, volume, bid_fills, ask_fills, pairs)
