"""Metered pro-rata netting: L = min(D, S), each buyer gets L·import/D, each seller L·export/S.

The short side is served in full (its shares are exact); the long side is split by largest
remainder, ties ordered by a hash of (interval, member id). Identical members therefore differ by at
most 1 Wh in an interval, and which of them gets the spare Wh changes from interval to interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .rounding import largest_remainder


def split_prorata(
    interval_start: int, member_ids: Sequence[str], import_wh: np.ndarray, export_wh: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(bought_local, sold_local, L) per member; Σ bought_local = Σ sold_local = L = min(D, S)."""
    demand, supply = int(import_wh.sum()), int(export_wh.sum())
    local = min(demand, supply)
    bought = largest_remainder(local, import_wh, interval_start, member_ids)
    sold = largest_remainder(local, export_wh, interval_start, member_ids)
    return bought, sold, local
