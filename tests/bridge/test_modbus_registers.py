"""Register maps, the shared codec, float32 rounding and the load profile: pure code, no ports."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.modbus.errors import RegisterMapError
from meterchain.bridge.modbus.reader import float32_step_mwh, kwh_to_wh, meter_values_from_registers
from meterchain.bridge.modbus.registers import (
    ENERGY_BLOCK_COUNT,
    ENERGY_BLOCK_START,
    MODEL_PROBE_ADDRESS,
    SDM120,
    SDM630,
    Register,
    Table,
    ValueType,
    decode_registers,
    encode_registers,
    identify_model,
    register_map_for,
)
from meterchain.bridge.modbus.simulation import LoadProfile


def _float32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_documented_addresses_of_both_models() -> None:
    assert SDM630.register("voltage_l3").address == 0x0004
    assert SDM630.register("current_l2").address == 0x0008
    assert SDM630.register("power_l3").address == 0x0010
    assert SDM630.register("power_total").address == 0x0034
    for m in (SDM630, SDM120):
        assert m.register("frequency").address == 0x0046
        assert m.register("import_energy").address == 0x0048
        assert m.register("export_energy").address == 0x004A
        assert m.register("total_energy").address == 0x0156
        serial = m.register("serial_number")
        assert (serial.table, serial.address, serial.value_type) == (
            Table.HOLDING, 0xFC00, ValueType.UINT32)
    assert SDM120.register("power_l1").address == 0x000C
    assert not SDM120.has("voltage_l2") and not SDM120.has("power_total")


def test_energy_block_is_one_legal_read_on_both_models() -> None:
    for m in (SDM630, SDM120):
        assert m.covers(Table.INPUT, ENERGY_BLOCK_START, ENERGY_BLOCK_COUNT)
        assert m.register("export_energy").end == ENERGY_BLOCK_START + ENERGY_BLOCK_COUNT


def test_reserved_words_read_zero_and_unknown_addresses_are_refused() -> None:
    values = {"power_total": 1234.0}
    words = encode_registers(SDM630, Table.INPUT, 0x002C, 2, values)
    assert words == [0, 0]  # 0x002C is reserved inside the block
    assert encode_registers(SDM630, Table.INPUT, 0x0050, 2, values) is None
    assert encode_registers(SDM120, Table.INPUT, MODEL_PROBE_ADDRESS, 2, values) is None
    assert encode_registers(SDM630, Table.HOLDING, 0x0000, 2, values) is None


def test_codec_round_trip_through_pymodbus_conversion() -> None:
    values = {"voltage_l1": 231.5, "import_energy": 12345.678, "power_total": -2000.0}
    words = encode_registers(SDM630, Table.INPUT, 0, ENERGY_BLOCK_COUNT, values)
    assert words is not None
    decoded = decode_registers(SDM630, Table.INPUT, 0, words)
    assert decoded["voltage_l1"] == 231.5
    assert decoded["power_total"] == -2000.0
    assert decoded["import_energy"] == _float32(12345.678)
    assert decoded["voltage_l2"] == 0.0
    serial = encode_registers(SDM120, Table.HOLDING, 0xFC00, 2, {"serial_number": 0x01020304})
    assert serial == [0x0102, 0x0304]


def test_moved_register_is_moved_for_encoder_and_decoder() -> None:
    moved = dataclasses.replace(
        SDM630,
        registers=tuple(
            dataclasses.replace(r, address=0x0036) if r.name == "power_total" else r
            for r in SDM630.registers
        ),
    )
    words = encode_registers(moved, Table.INPUT, 0, ENERGY_BLOCK_COUNT, {"power_total": 777.0})
    assert words is not None and words[0x34:0x36] == [0, 0]
    assert decode_registers(moved, Table.INPUT, 0, words)["power_total"] == 777.0


def test_inconsistent_maps_are_refused() -> None:
    clash = Register(Table.INPUT, 0x0001, "clash", ValueType.FLOAT32, "V")
    with pytest.raises(RegisterMapError, match="overlapping"):
        dataclasses.replace(SDM120, registers=(*SDM120.registers, clash))
    outside = Register(Table.INPUT, 0x0300, "far", ValueType.FLOAT32, "V")
    with pytest.raises(RegisterMapError, match="outside"):
        dataclasses.replace(SDM120, registers=(*SDM120.registers, outside))
    with pytest.raises(RegisterMapError, match="unknown meter model") as info:
        register_map_for("sdm999")
    assert "sdm630" in info.value.diagnostics()


def test_probe_singles_out_the_model() -> None:
    assert identify_model(probe_answered=True) is SDM630
    assert identify_model(probe_answered=False) is SDM120
    with pytest.raises(RegisterMapError):
        identify_model(probe_answered=True, candidates=(SDM120,))


def test_kwh_rounding_to_wh() -> None:
    assert kwh_to_wh(_float32(12345.678)) == 12_345_678
    assert kwh_to_wh(0.0) == 0
    assert float32_step_mwh(_float32(12345.0)) == 977  # 2**-10 kWh
    assert float32_step_mwh(_float32(1_000_000.0)) == 62_500
    with pytest.raises(ValueError):
        kwh_to_wh(float("nan"))


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 4e6), st.floats(0, 4e6))
def test_rounding_is_monotonic_and_within_half_a_step(a: float, b: float) -> None:
    lo, hi = sorted((_float32(a), _float32(b)))
    assert kwh_to_wh(lo) <= kwh_to_wh(hi)
    assert abs(kwh_to_wh(hi) - hi * 1000) <= 0.5 + 1e-9


def test_block_decodes_to_integers() -> None:
    values = {"voltage_l1": 230.04, "current_l1": 1.2345, "power_l1": -456.4, "frequency": 49.987,
              "import_energy": 100.0, "export_energy": 2.5}
    block = encode_registers(SDM120, Table.INPUT, 0, ENERGY_BLOCK_COUNT, values)
    serial = encode_registers(SDM120, Table.HOLDING, 0xFC00, 2, {"serial_number": 42})
    assert block is not None and serial is not None
    got = meter_values_from_registers(SDM120, 9, block, serial, read_at=1_700_000_000)
    assert (got.voltage_dv, got.current_ma, got.phase_power_w) == ((2300,), (1235,), (-456,))
    assert (got.power_w, got.frequency_mhz, got.import_wh, got.export_wh) == (-456, 49987, 100_000, 2500)
    assert (got.serial, got.device_id, got.read_at) == ("42", 9, 1_700_000_000)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2_000_000_000), st.integers(0, 200_000), st.integers(0, 200_000))
def test_profile_energy_is_additive_and_matches_power(start: int, d1: int, d2: int) -> None:
    profile = LoadProfile(seed=3)
    mid, end = start + d1, start + d1 + d2
    whole = profile.energy_j(start, end, 3)
    first, second = profile.energy_j(start, mid, 3), profile.energy_j(mid, end, 3)
    assert whole == (first[0] + second[0], first[1] + second[1])
    one_second = profile.energy_j(start, start + 1, 3)
    power = profile.power_w(start, 3)
    assert one_second == ((power, 0) if power >= 0 else (0, -power))


def test_profile_is_deterministic_and_exports_at_noon() -> None:
    day = 1_750_032_000 - 1_750_032_000 % 86_400
    a, b = LoadProfile(seed=5), LoadProfile(seed=5)
    assert [a.power_w(day + s, 1) for s in range(0, 86_400, 600)] == [
        b.power_w(day + s, 1) for s in range(0, 86_400, 600)]
    imported, exported = a.energy_j(day, day + 86_400, 3)
    assert imported > 0 and exported > 0
    assert a.power_w(day + 3 * 3600, 3) > 0  # night: PV off, base load on
