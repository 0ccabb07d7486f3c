"""The reading and its one byte form: round trips, field bounds, deterministic CBOR only."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import (
    EXPORT_OBIS,
    IMPORT_OBIS,
    MAX_READING_SIZE,
    MAX_SAFE_INT,
    READING_TYPE,
    ClockSync,
    Quality,
    Reading,
    Register,
    aligned_interval,
)

KID = bytes(range(32))


def base(**overrides: object) -> Reading:
    fields: dict[str, object] = dict(
        device="gw-1",
        key_id=KID,
        seq=1,
        meter="SDM630-1",
        start=1_700_000_000,
        end=1_700_000_900,
        registers={IMPORT_OBIS: Register(123_456, "Wh"), EXPORT_OBIS: Register(0, "Wh")},
    )
    fields.update(overrides)
    return Reading(**fields)  # type: ignore[arg-type]


def raw_map(**overrides: object) -> dict[str, object]:
    obj = cbor2.loads(base().to_cbor())
    obj.update(overrides)
    return obj


readings = st.builds(
    base,
    device=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),
    key_id=st.binary(min_size=32, max_size=32),
    seq=st.integers(1, MAX_SAFE_INT),
    meter=st.from_regex(r"[\x21-\x7e]{1,64}", fullmatch=True),
    registers=st.fixed_dictionaries(
        {
            IMPORT_OBIS: st.builds(Register, st.integers(0, MAX_SAFE_INT), st.just("Wh")),
            EXPORT_OBIS: st.builds(Register, st.integers(0, MAX_SAFE_INT), st.just("Wh")),
        },
        optional={"1-0:3.8.0": st.builds(Register, st.integers(0, MAX_SAFE_INT), st.just("varh"))},
    ),
    clock=st.sampled_from(ClockSync),
    status=st.integers(0, 2**32 - 1),
    quality=st.sampled_from(Quality),
)


@given(readings)
@settings(max_examples=200)
def test_round_trip_is_exact(reading: Reading) -> None:
    data = reading.to_cbor()
    assert Reading.from_cbor(data) == reading
    assert Reading.from_cbor(data).to_cbor() == data
    assert len(data) <= MAX_READING_SIZE


def test_type_key_comes_first_so_every_reading_has_one_prefix() -> None:
    data = base().to_cbor()
    assert data[1:3] == b"\x61t" and data[3:4] == bytes([0x60 + len(READING_TYPE)])
    assert data[4 : 4 + len(READING_TYPE)] == READING_TYPE.encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", ""),
        ("device", "gw/1"),
        ("device", "x" * 65),
        ("key_id", b"\x00" * 31),
        ("seq", 0),
        ("seq", MAX_SAFE_INT + 1),
        ("seq", True),
        ("meter", ""),
        ("meter", "has space"),
        ("start", -1),
        ("end", 1_700_000_000),  # empty interval
        ("end", 1_700_000_000 + 86_401),  # longer than a day
        ("status", 2**32),
        ("clock", "maybe"),
        ("quality", "guessed"),
        ("registers", {IMPORT_OBIS: Register(1, "Wh")}),
        ("registers", {IMPORT_OBIS: Register(-1, "Wh"), EXPORT_OBIS: Register(0, "Wh")}),
        ("registers", {IMPORT_OBIS: Register(1, "kWh"), EXPORT_OBIS: Register(0, "Wh")}),
        ("registers", {IMPORT_OBIS: Register(1, "Wh"), "1-0:3.8.0": Register(0, "varh")}),
        ("registers", {IMPORT_OBIS: Register(1, "Wh"), EXPORT_OBIS: Register(0, "Wh"), "1-0:1.8": Register(0, "Wh")}),
        (
            "registers",
            {IMPORT_OBIS: Register(1, "Wh"), EXPORT_OBIS: Register(0, "Wh"), "1-0:256.8.0": Register(0, "Wh")},
        ),
        # another script's digits ("\u0661" is Arabic-Indic one): int() reads them, the contract must not
        ("registers", {IMPORT_OBIS: Register(1, "Wh"), EXPORT_OBIS: Register(0, "Wh"),
                       "1-0:3.8.\u0661": Register(0, "Wh")}),
    ],
)
def test_every_field_is_bounded(field: str, value: object) -> None:
    with pytest.raises(FieldError):
        base(**{field: value})


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda m: m.update(t="meterchain/reading/v2"), id="wrong-type"),
        pytest.param(lambda m: m.pop("quality"), id="missing-field"),
        pytest.param(lambda m: m.update(extra=1), id="unknown-field"),
        pytest.param(lambda m: m.update(regs={IMPORT_OBIS: [1, "Wh"], EXPORT_OBIS: [0]}), id="bad-register"),
        pytest.param(lambda m: m.update(seq="1"), id="seq-as-text"),
    ],
)
def test_wrong_maps_are_field_errors(mutate) -> None:  # type: ignore[no-untyped-def]
    obj = raw_map()
    mutate(obj)
    with pytest.raises(FieldError):
        Reading.from_cbor(cbor2.dumps(obj, canonical=True))


def test_float_anywhere_is_rejected() -> None:
    data = cbor2.dumps(raw_map(seq=1.0), canonical=True)
    with pytest.raises(EncodingError, match="float"):
        Reading.from_cbor(data)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda m: cbor2.dumps(dict(reversed(list(m.items())))), id="unsorted-keys"),
        pytest.param(
            lambda m: (
                b"\xbf"
                + b"".join(
                    cbor2.dumps(k) + cbor2.dumps(v, canonical=True)
                    for k, v in sorted(m.items(), key=lambda kv: (len(kv[0]), kv[0]))
                )
                + b"\xff"
            ),
            id="indefinite-map",
        ),
        pytest.param(
            lambda m: cbor2.dumps(m, canonical=True).replace(b"cseq\x01", b"cseq\x18\x01"), id="non-minimal-int"
        ),
        pytest.param(lambda m: cbor2.dumps(m, canonical=True) + b"\x00", id="trailing-byte"),
        pytest.param(lambda m: b"\xc1" + cbor2.dumps(m, canonical=True), id="tagged"),
    ],
)
def test_non_deterministic_cbor_is_rejected(encode) -> None:  # type: ignore[no-untyped-def]
    data = encode(raw_map())
    assert data != base().to_cbor()
    with pytest.raises(EncodingError):
        Reading.from_cbor(data)


def test_duplicate_keys_are_rejected() -> None:
    good = base().to_cbor()
    # Rewrite the map header to one more pair and append a second "seq" key at the end.
    dup = bytes([good[0] + 1]) + good[1:] + cbor2.dumps("seq") + cbor2.dumps(2)
    with pytest.raises(EncodingError):
        Reading.from_cbor(dup)


@pytest.mark.parametrize("data", [b"", b"\xa1", base().to_cbor()[:-1], b"\x00" * (MAX_READING_SIZE + 1)])
def test_truncated_and_oversized_input_is_rejected(data: bytes) -> None:
    with pytest.raises(EncodingError):
        Reading.from_cbor(data)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_junk_never_escapes_as_anything_but_encoding_error(data: bytes) -> None:
    with contextlib.suppress(EncodingError):
        Reading.from_cbor(data)


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(EncodingError):
        cbor.decode(b"\x81" * 1000 + b"\x00")


def test_aligned_interval() -> None:
    assert aligned_interval(1_700_000_123) == (1_699_999_200, 1_700_000_100)
    assert aligned_interval(1_700_000_100) == (1_699_999_200, 1_700_000_100)
    with pytest.raises(ValueError):
        aligned_interval(0, 7)
