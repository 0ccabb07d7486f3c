"""Exact integer rounding: half-even division and largest-remainder splits with hashed ties.

Half-even ("banker's") rounding has no bias on average, so over a month neither members nor the
community account gain from rounding. Largest remainder keeps a split's sum exact; equal remainders
are ordered by SHA-256 of (interval, member id), a fresh order every interval, so no member gets
the spare Wh every time and nothing depends on the order the inputs arrived in.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

TIE_DOMAIN = b"meterchain/netting/tie/v1\x00"


def div_half_even(numerator: int, denominator: int) -> int:
    """round(numerator / denominator) with ties to even, exactly, for any sign; denominator > 0."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def div_half_even_array(numerator: np.ndarray, denominator: int) -> np.ndarray:
    """Vectorised `div_half_even` for int64 arrays (numpy's // and % floor like Python's)."""
    quotient, remainder = np.divmod(numerator, denominator)
    twice = 2 * remainder
    up = (twice > denominator) | ((twice == denominator) & (quotient % 2 == 1))
    return quotient + up.astype(np.int64)


def tie_key(interval_start: int, member_id: str) -> bytes:
    """The tie-break key of a member in an interval: lower keys receive the spare units first."""
    return hashlib.sha256(
        TIE_DOMAIN + struct.pack(">q", interval_start) + member_id.encode("utf-8")
    ).digest()


def largest_remainder(
    total: int,
    weights: np.ndarray,
    interval_starts: Sequence[int] | int,
    member_ids: Sequence[str] | str,
) -> np.ndarray:
    """Split `total` into integers proportional to `weights`, summing to `total` exactly.

    Each share is floor or ceil of its exact value. The `total - Σ floor` spare units go to the
    largest remainders; equal remainders at the cut-off are ordered by `tie_key(interval, member)`
    (each argument is one value for all, or one per weight). Requires total ≤ Σ weights-scale
    bounds documented in model.py so `total × weight` fits int64.
    """
    weights = np.asarray(weights, dtype=np.int64)
    weight_sum = int(weights.sum())
    if weight_sum == 0:
        if total != 0:
            raise ValueError("cannot split a non-zero total over zero weights")
        return np.zeros_like(weights)
    scaled = weights * np.int64(total)
    shares, remainders = np.divmod(scaled, weight_sum)
    spare = total - int(shares.sum())
    if spare == 0:
        return shares
    # The spare-th largest remainder is the cut-off: all above it win, ties at it go by hash.
    cutoff = np.partition(remainders, remainders.size - spare)[remainders.size - spare]
    above = remainders > cutoff
    shares[above] += 1
    still = spare - int(above.sum())
    if still:
        tied = np.flatnonzero(remainders == cutoff)

        def key(i: int) -> bytes:
            start = interval_starts if isinstance(interval_starts, int) else interval_starts[i]
            member = member_ids if isinstance(member_ids, str) else member_ids[i]
            return tie_key(start, member)

        winners = sorted(tied.tolist(), key=key)[:still]
        shares[winners] += 1
    return shares
