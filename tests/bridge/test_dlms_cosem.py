"""COSEM objects: OBIS codes, exact scaler-unit, clock time in UTC, profile buffers and kinds."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.axdr import Data, DateTime, Tag
from meterchain.bridge.dlms.cosem import (
    CaptureObject,
    ClassId,
    MeterClock,
    QuantityKind,
    RegisterValue,
    capture_objects_from_data,
    datetime_from_utc,
    datetime_to_utc,
    decode_profile_buffer,
    integer_value,
    meter_clock_from_data,
    quantity_kind,
    scaler_unit_from_data,
)
from meterchain.bridge.dlms.errors import CosemValueError
from meterchain.bridge.dlms.obis import CLOCK_OBIS, Obis

IMPORT = Obis.parse("1-0:1.8.0.255")
INTERVAL = Obis.parse("1-0:1.29.0.255")


def test_obis_forms() -> None:
    assert Obis.parse("1-0:1.8.0.255") == Obis.parse("1.0.1.8.0.255") == Obis.parse("1-0:1.8.0")
    assert str(IMPORT) == "1-0:1.8.0.255"
    assert Obis.decode(IMPORT.encode()) == IMPORT
    for bad in ("1-0:1.8", "1-0:1.8.0.256", "x", ""):
        with pytest.raises(CosemValueError):
            Obis.parse(bad)


def test_register_scaling_is_exact() -> None:
    volts = RegisterValue(2301, -1, 35)
    assert volts.exact() == Fraction(2301, 10)
    assert volts.in_units_of(-1) == 2301
    with pytest.raises(CosemValueError):
        volts.in_units_of(0)  # 230.1 V is not a whole volt
    kwh = RegisterValue(1234, 3, 30)
    assert kwh.in_units_of(0) == 1_234_000 and kwh.unit_name == "Wh"
    assert RegisterValue(-5, 2).in_units_of(0) == -500
    assert str(volts) == "2301/10 V"


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63), st.integers(-9, 9), st.integers(-9, 9))
def test_scaling_never_rounds(value: int, scaler: int, exponent: int) -> None:
    reading = RegisterValue(value, scaler, 30)
    try:
        whole = reading.in_units_of(exponent)
    except CosemValueError:
        assert reading.exact() / Fraction(10) ** exponent != int(
            reading.exact() / Fraction(10) ** exponent
        )
    else:
        assert Fraction(whole) * Fraction(10) ** exponent == reading.exact()


def test_scaler_unit_and_integer_values() -> None:
    assert scaler_unit_from_data(Data.structure([Data(Tag.INT8, -2), Data(Tag.ENUM, 30)])) == (
        -2,
        30,
    )
    for bad in (
        Data.structure([Data(Tag.INT8, 0)]),
        Data(Tag.UINT8, 1),
        Data.structure([Data(Tag.UINT8, 0), Data(Tag.ENUM, 30)]),
    ):
        with pytest.raises(CosemValueError):
            scaler_unit_from_data(bad)
    assert integer_value(Data(Tag.INT64, -7)) == -7
    with pytest.raises(CosemValueError):
        integer_value(Data(Tag.FLOAT32, 1.5))
    with pytest.raises(CosemValueError):
        integer_value(Data.octets(b"12"))


def test_deviation_convention_utc_is_local_plus_deviation() -> None:
    # 12:30 local CET (deviation -60) is 11:30 UTC.
    local = DateTime(2026, 1, 1, 4, 12, 30, 0, 0, -60, 0)
    assert datetime_to_utc(local) == 1_767_225_600 + 11 * 3600 + 30 * 60
    assert datetime_from_utc(1_767_225_600 + 11 * 3600 + 30 * 60, -60, 0) == local
    unspecified = DateTime(2026, 1, 1, 4, 12, 30, 0, 0, None, 0)
    assert datetime_to_utc(unspecified, fallback_deviation=0) == 1_767_225_600 + 12 * 3600 + 30 * 60
    with pytest.raises(CosemValueError):
        datetime_to_utc(unspecified)
    for bad in (
        DateTime(),
        DateTime(2026, 2, 30, 0xFF, 0, 0, 0, 0, 0, 0),
        DateTime(2026, 13, 1, 1, 0, 0, 0, 0, 0, 0),
    ):
        with pytest.raises(CosemValueError):
            datetime_to_utc(bad, 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4_000_000_000), st.integers(-720, 720))
def test_utc_round_trips_through_any_deviation(utc: int, deviation: int) -> None:
    assert datetime_to_utc(datetime_from_utc(utc, deviation)) == utc


def test_meter_clock_status() -> None:
    raw = datetime_from_utc(1_767_225_600, -60, 0x02)
    clock = meter_clock_from_data(Data.octets(raw.encode()))
    assert clock == MeterClock(1_767_225_600, -60, 0x02, raw)
    assert not clock.trustworthy
    with pytest.raises(CosemValueError):
        meter_clock_from_data(Data.octets(b"\x00" * 11))
    with pytest.raises(CosemValueError):
        meter_clock_from_data(Data.null())


CAPTURES = (
    CaptureObject(ClassId.CLOCK, CLOCK_OBIS, 2),
    CaptureObject(ClassId.REGISTER, IMPORT, 2),
    CaptureObject(ClassId.REGISTER, INTERVAL, 2),
)


def _row(stamp: DateTime | None, cumulative: int, interval: int) -> Data:
    cell = Data.null() if stamp is None else Data.octets(stamp.encode())
    return Data.structure([cell, Data(Tag.UINT32, cumulative), Data(Tag.UINT32, interval)])


def test_capture_objects_round_trip_and_kinds() -> None:
    encoded = Data.array([c.to_data() for c in CAPTURES])
    assert capture_objects_from_data(encoded) == CAPTURES
    assert [quantity_kind(c) for c in CAPTURES] == [
        QuantityKind.TIMESTAMP,
        QuantityKind.CUMULATIVE,
        QuantityKind.INTERVAL,
    ]
    assert (
        quantity_kind(CaptureObject(3, Obis.parse("1-0:32.7.0.255"), 2))
        is QuantityKind.INSTANTANEOUS
    )
    assert quantity_kind(CaptureObject(1, Obis.parse("0-0:96.10.1.255"), 2)) is QuantityKind.OTHER
    with pytest.raises(CosemValueError):
        capture_objects_from_data(Data.array([Data(Tag.UINT8, 1)]))


def test_profile_buffer_rebuilds_null_timestamps() -> None:
    t0 = 1_767_225_600
    buffer = Data.array(
        [
            _row(datetime_from_utc(t0, -60, 0), 1000, 0),
            _row(None, 1040, 40),
            _row(None, 1100, 60),
            _row(datetime_from_utc(t0 + 3600, -60, 0x80), 1200, 100),  # a gap: full stamp again
        ]
    )
    entries = decode_profile_buffer(buffer, CAPTURES, 900, {IMPORT: (0, 30), INTERVAL: (0, 30)})
    assert [e.timestamp for e in entries] == [t0, t0 + 900, t0 + 1800, t0 + 3600]
    assert [e.timestamp_rebuilt for e in entries] == [False, True, True, False]
    assert entries[3].clock_status == 0x80
    assert entries[2].value_of(IMPORT) == RegisterValue(1100, 0, 30)
    assert entries[2].values[1].kind is QuantityKind.INTERVAL


def test_profile_buffer_errors() -> None:
    with pytest.raises(CosemValueError):  # null first timestamp: nothing to rebuild from
        decode_profile_buffer(Data.array([_row(None, 1, 1)]), CAPTURES, 900, {})
    with pytest.raises(CosemValueError):  # row shorter than the capture objects
        decode_profile_buffer(Data.array([Data.structure([Data.null()])]), CAPTURES, 900, {})
    with pytest.raises(CosemValueError):
        decode_profile_buffer(Data(Tag.UINT8, 1), CAPTURES, 900, {})
    with pytest.raises(CosemValueError):
        decode_profile_buffer(Data.array([]), CAPTURES[1:], 900, {})
    previous = decode_profile_buffer(
        Data.array([_row(None, 1, 1)]), CAPTURES, 900, {}, 0, previous_timestamp=900
    )
    assert previous[0].timestamp == 1800
