"""Price CSV import, the settlement digest's encoding, and typed errors on bad input."""

from __future__ import annotations

import hashlib

import cbor2
import numpy as np
import pytest
from meterchain.backend.settlement.netting import (
    BoundsError,
    Community,
    Fees,
    InputError,
    IntervalInput,
    Listing,
    MemberInterval,
    PriceDataError,
    PriceError,
    PriceSchedule,
    encode_document,
    parse_price_csv,
    settle_interval,
)
from meterchain.backend.settlement.netting.digest import settlement_document

from tests.support.paths import REPO_ROOT

DOCS = REPO_ROOT / "docs" / "netting.md"


def test_day_ahead_csv_with_offsets_and_header() -> None:
    text = ("start,price\n"
            "2024-10-27T01:00:00+02:00,87.52\n"
            "2024-10-27T02:00:00+02:00,-3.10\n"
            "2024-10-27T02:00:00+01:00,80\n")
    schedule = parse_price_csv(text, unit="EUR/MWh")
    t = 1729983600  # 2024-10-26T23:00Z
    assert [s for s, _ in schedule.steps] == [t, t + 3600, t + 7200]
    assert schedule.price_at(t + 900) == 87_520 and schedule.price_at(t + 3600) == -3_100
    assert schedule.price_at(t + 7200 + 2700) == 80_000
    with pytest.raises(PriceError):
        schedule.price_at(t + 3 * 3600)  # past the last hour: no silent reuse
    with pytest.raises(PriceError):
        schedule.price_at(t - 900)


def test_semicolon_csv_with_decimal_comma_in_cent() -> None:
    schedule = parse_price_csv("1700002800;31,2345\n1700006400;12,5\n", unit="ct/kWh")
    assert schedule.steps == ((1700002800, 312_345), (1700006400, 125_000))
    thousands = parse_price_csv("Zeit;Preis\n1700002800;1.031,5\n", unit="EUR/MWh")
    assert thousands.steps == ((1700002800, 1_031_500),)


@pytest.mark.parametrize("text,line,match", [
    ("2024-01-01T00:00:00,1\n", 1, "offset"),
    ("0,1\n900,x\n", 2, "unreadable price"),
    ("0,1\n0,2\n", 2, "repeated"),
    ("0,0.0001\n", 1, "whole number"),
    ("450,1\n", 1, "grid"),
    ("0,1,2\n", 1, "two columns"),
    ("0,99999999\n", 1, "outside"),
    ("yesterday,1\n", 1, "timestamp"),
    ("a\rb", 1, "unreadable CSV"),
    ("0,1\n900,2\rx\n", 2, "unreadable CSV"),
])
def test_bad_price_rows_name_their_line(text: str, line: int, match: str) -> None:
    with pytest.raises(PriceDataError, match=match) as err:
        parse_price_csv(text)
    assert err.value.context.get("line") == line


def test_empty_csv_and_unknown_unit_are_refused() -> None:
    with pytest.raises(PriceDataError):
        parse_price_csv("start,price\n")
    with pytest.raises(PriceDataError):
        parse_price_csv("0,1\n", unit="EUR/GJ")


def _example() -> tuple[Community, IntervalInput]:
    """The worked example of docs/netting.md §Digest."""
    community = Community("demo", PriceSchedule.fixed(300_000), PriceSchedule.fixed(80_000),
                          Fees(20_000, 60_000, 5_000, 2_500_000, 1_900), co2_grams_per_kwh=380)
    leaves = [hashlib.sha256(b"reading-%d" % k).digest() for k in range(3)]
    inp = IntervalInput.from_members(1_711_846_800, [
        MemberInterval("alice", 1_200, 0, leaf_hashes=(leaves[0],)),
        MemberInterval("bob", 0, 900, leaf_hashes=(leaves[1],)),
        MemberInterval("carol", 300, 0, leaf_hashes=(leaves[2],)),
    ])
    return community, inp


def test_digest_is_sha256_of_canonical_cbor_and_matches_the_docs() -> None:
    community, inp = _example()
    result = settle_interval(community, inp)
    fields = {k: getattr(result, k) for k in (
        "community_id", "interval_start", "interval_seconds", "revision", "supersedes", "mode",
        "rule", "rule_version", "retail_price", "feed_in_price", "fees", "co2_grams_per_kwh",
        "member_ids", "leaf_hashes", "columns", "tiers", "balances", "totals")}
    encoded = encode_document(settlement_document(**fields))
    assert hashlib.sha256(encoded).digest() == result.digest
    decoded = cbor2.loads(encoded)
    assert decoded["type"] == "meterchain/settlement/v1"
    assert cbor2.dumps(decoded, canonical=True) == encoded  # the encoding is its own canonical form
    assert list(decoded)[:3] == ["mode", "rule", "type"]  # keys sorted length-first, then bytes
    bought = np.frombuffer(decoded["energy"]["bought_local_wh"], ">i8")
    assert bought.tolist() == [720, 0, 180]
    assert result.digest.hex() in DOCS.read_text(encoding="utf-8")


def test_any_change_of_input_or_output_changes_the_digest() -> None:
    community, inp = _example()
    base = settle_interval(community, inp).digest
    other = IntervalInput.from_columns(inp.interval_start, inp.member_ids, inp.import_wh,
                                       inp.export_wh, [0, 0, 1], inp.leaf_hashes)
    assert settle_interval(community, other).digest != base  # a quality flag
    fewer = IntervalInput.from_columns(inp.interval_start, inp.member_ids, inp.import_wh,
                                       inp.export_wh, None, inp.leaf_hashes[1:])
    assert settle_interval(community, fewer).digest != base  # a leaf
    assert settle_interval(community, inp, {}).digest != base  # auction instead of pro-rata


@pytest.mark.parametrize("imports,error", [
    ([10_000_001, 0], BoundsError),
    ([-1, 0], BoundsError),
    ([1.5, 0], InputError),
    (["7", 0], InputError),
    ([2**70, 0], InputError),
    ([1], InputError),
])
def test_bad_energy_is_a_typed_error(imports: list[object], error: type[Exception]) -> None:
    with pytest.raises(error):
        IntervalInput.from_columns(0, ["a", "b"], imports, [0, 0])


def test_structural_input_errors() -> None:
    with pytest.raises(InputError, match="twice"):
        IntervalInput.from_columns(0, ["a", "a"], [1, 1], [0, 0])
    with pytest.raises(InputError):
        IntervalInput.from_columns(0, ["a", ""], [1, 1], [0, 0])
    with pytest.raises(InputError):
        IntervalInput.from_columns(0, ["a"], [1], [0], leaf_hashes=[b"short"])
    with pytest.raises(InputError, match="quality"):
        IntervalInput.from_members(0, [MemberInterval("a", 1, 0, quality=9)])  # type: ignore
    with pytest.raises(BoundsError):
        IntervalInput.from_columns(0, [f"m{k}" for k in range(10_001)], np.full(10_001, 10**7),
                                   np.zeros(10_001, np.int64))
    community, inp = _example()
    with pytest.raises(InputError, match="grid"):
        settle_interval(community, IntervalInput.from_columns(450, ["a"], [1], [0]))
    with pytest.raises(InputError, match="another member"):
        settle_interval(community, inp, {"alice": Listing("bob")})


def test_price_errors() -> None:
    with pytest.raises(PriceError, match="above retail"):
        Community("c", PriceSchedule.fixed(10), PriceSchedule.fixed(20)).prices_at(0)
    with pytest.raises(PriceError):
        PriceSchedule(((900, 1), (0, 2)))
    with pytest.raises(PriceError):
        Community("c", PriceSchedule.fixed(10), PriceSchedule.fixed(5), rule="fixed")  # type: ignore
    with pytest.raises(BoundsError):
        Fees(vat_basis_points=10_001)


def test_a_roster_is_validated_once_and_gives_the_same_result() -> None:
    from meterchain.backend.settlement.netting import MemberRoster

    with pytest.raises(InputError, match="twice"):
        MemberRoster.of(["a", "b", "a"])
    with pytest.raises(InputError):
        MemberRoster.of(["a", "b\x00c"])
    roster = MemberRoster.of(["carol", "alice", "bob"])
    assert roster.ids == ("alice", "bob", "carol")
    community, inp = _example()
    fast = IntervalInput.from_columns(inp.interval_start, roster, [1_200, 0, 300], [0, 900, 0],
                                      None, inp.leaf_hashes)
    assert fast.member_ids is roster.ids
    assert settle_interval(community, fast).digest == settle_interval(community, inp).digest
