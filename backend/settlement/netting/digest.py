"""The settlement digest: SHA-256 over one deterministic CBOR encoding of a settled interval.

The encoding is cbor2 with canonical=True (RFC 7049 §3.9: shortest integer forms, definite
lengths, map keys sorted by encoded length then bytes). Per-member columns are CBOR byte strings of
8-byte big-endian two's-complement integers in member order (ids sorted by code point), so a
100k-member interval hashes at memory speed and an auditor can rebuild them with any language.
docs/netting.md lists the map field by field; `settlement_document` returns it for inspection.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
import numpy as np

from .model import (
    ENERGY_COLUMNS,
    MONEY_KINDS,
    CommunityTotals,
    Fees,
    MemberColumns,
    MoneyBalance,
    TierClearing,
)

DOCUMENT_TYPE = "meterchain/settlement/v1"


def column_bytes(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype=">i8").tobytes()


def member_bytes(member_ids: tuple[str, ...]) -> bytes:
    """Member ids as one byte string: each id's UTF-8 followed by 0x00 (ids never contain NUL)."""
    return "\x00".join(member_ids).encode("utf-8") + b"\x00" if member_ids else b""


def settlement_document(
    *,
    community_id: str,
    interval_start: int,
    interval_seconds: int,
    revision: int,
    supersedes: bytes | None,
    mode: str,
    rule: str,
    rule_version: int,
    retail_price: int,
    feed_in_price: int,
    fees: Fees,
    co2_grams_per_kwh: int,
    member_ids: tuple[str, ...],
    leaf_hashes: tuple[bytes, ...],
    columns: MemberColumns,
    tiers: tuple[TierClearing, ...],
    balances: tuple[MoneyBalance, ...],
    totals: CommunityTotals,
) -> dict[str, Any]:
    """The map that is CBOR-encoded and hashed (every value an int, text, bytes, list or map)."""
    return {
        "type": DOCUMENT_TYPE,
        "community": community_id,
        "interval": [interval_start, interval_seconds],
        "revision": revision,
        "supersedes": supersedes,
        "mode": mode,
        "rule": [rule, rule_version],
        "prices": {
            "retail": retail_price,
            "feed_in": feed_in_price,
            "local_network_fee": fees.local_network_per_kwh,
            "grid_network_fee": fees.grid_network_per_kwh,
            "platform_fee": fees.platform_per_kwh,
            "co2": co2_grams_per_kwh,
        },
        "inputs": {"leaves": b"".join(leaf_hashes), "members": member_bytes(member_ids)},
        "energy": {name: column_bytes(columns.energy[name]) for name in ENERGY_COLUMNS},
        "money": {kind: column_bytes(columns.money[kind]) for kind, _ in MONEY_KINDS},
        "exact": {kind: column_bytes(columns.exact[kind]) for kind, _ in MONEY_KINDS},
        "tiers": [[t.name, t.price, t.volume_wh, [list(p) for p in t.pairs]] for t in tiers],
        "balances": [[b.kind, b.members, b.counterparty, b.rounding] for b in balances],
        "totals": [
            totals.demand_wh, totals.supply_wh, totals.local_wh, totals.grid_import_wh,
            totals.grid_export_wh, totals.self_sufficiency_ppm, totals.self_consumption_ppm,
            totals.co2_avoided_g,
        ],
    }


def encode_document(document: dict[str, Any]) -> bytes:
    return cbor2.dumps(document, canonical=True)


def digest_document(document: dict[str, Any]) -> bytes:
    return hashlib.sha256(encode_document(document)).digest()
