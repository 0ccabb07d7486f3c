"""A-XDR data types: golden values, every type round-trips, decoding fails only with typed errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.axdr import (
    MAX_DEPTH,
    Data,
    DateTime,
    Tag,
    decode_data,
    decode_data_exact,
    decode_length,
    encode_data,
    encode_length,
)
from meterchain.bridge.dlms.errors import AxdrError

from tests.support.dlms_strategies import data_values, date_times


def test_golden_double_long_unsigned() -> None:
    assert decode_data_exact(bytes.fromhex("060001e240")) == Data(Tag.UINT32, 123456)
    assert encode_data(Data(Tag.UINT32, 123456)).hex() == "060001e240"


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (Data(Tag.INT8, -3), "0ffd"),
        (Data(Tag.INT16, -2), "10fffe"),
        (Data(Tag.UINT16, 2301), "1208fd"),
        (Data(Tag.INT64, -1), "14ffffffffffffffff"),
        (Data(Tag.UINT64, 2**64 - 1), "15ffffffffffffffff"),
        (Data(Tag.ENUM, 30), "161e"),
        (Data(Tag.BOOLEAN, True), "03ff"),
        (Data.octets(b"\x01\x00\x01\x08\x00\xff"), "09060100010800ff"),
        (Data(Tag.VISIBLE_STRING, "ABC"), "0a03414243"),
        (Data.structure([Data(Tag.INT8, 0), Data(Tag.ENUM, 30)]), "02020f00161e"),
        (Data.array([]), "0100"),
        (Data.null(), "00"),
    ],
)
def test_known_encodings(value: Data, encoded: str) -> None:
    assert encode_data(value).hex() == encoded
    assert decode_data_exact(bytes.fromhex(encoded)) == value


def test_long_lengths() -> None:
    for length in (0, 127, 128, 255, 256, 65535, 65536):
        raw = encode_length(length)
        assert decode_length(raw, 0) == (length, len(raw))
    value = Data.octets(bytes(300))
    assert encode_data(value)[:4].hex() == "0982012c"
    assert decode_data_exact(encode_data(value)) == value


def test_date_time_fields_and_unspecified_deviation() -> None:
    raw = bytes.fromhex("07ea0101040c1e00ff8000ff")
    dt = DateTime.decode(raw)
    assert (dt.year, dt.month, dt.day, dt.weekday, dt.hour, dt.minute) == (2026, 1, 1, 4, 12, 30)
    assert dt.deviation is None and dt.status == 0xFF
    assert dt.encode() == raw
    assert DateTime.decode(bytes.fromhex("07ea0101040c1e0000ffc480")).deviation == -60


def test_typed_errors_for_bad_input() -> None:
    cases = [
        b"",
        b"\x06\x00\x01",
        b"\x13\x00",
        b"\x09\x05ab",
        b"\x01\x05\x11",
        b"\x09\x85\x00\x00\x00\x00\x01",
    ]
    for blob in cases:
        with pytest.raises(AxdrError):
            decode_data(blob)
    with pytest.raises(AxdrError):
        decode_data_exact(b"\x11\x01\x00")  # trailing byte
    with pytest.raises(AxdrError):
        encode_data(Data(Tag.UINT8, 256))
    with pytest.raises(AxdrError):
        encode_data(Data(Tag.BOOLEAN, 1))
    nested = b"\x02\x01" * (MAX_DEPTH + 2) + b"\x00"
    with pytest.raises(AxdrError):
        decode_data(nested)


@settings(max_examples=300, deadline=None)
@given(data_values)
def test_every_value_round_trips(value: Data) -> None:
    raw = encode_data(value)
    assert decode_data_exact(raw) == value
    assert encode_data(decode_data_exact(raw)) == raw


@settings(max_examples=200, deadline=None)
@given(date_times)
def test_every_date_time_round_trips(value: DateTime) -> None:
    assert DateTime.decode(value.encode()) == value


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decoder_raises_only_axdr_errors(blob: bytes) -> None:
    try:
        value, end = decode_data(blob)
    except AxdrError:
        return
    assert 0 < end <= len(blob)
    # Whatever decoded has one canonical encoding, stable from then on.
    canonical = encode_data(value)
    assert encode_data(decode_data_exact(canonical)) == canonical
