"""Live telemetry: round trip, strict decoding, bounds (contract/telemetry.py, docs/format.md §11)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.telemetry import MAX_POWER_W, TELEMETRY_TYPE, Telemetry


def test_round_trip_and_bytes_start_with_the_type() -> None:
    sample = Telemetry("gw-1", "SDM630-1", 1_700_000_000, -1234, (2301, 2299, 2310))
    data = sample.to_cbor()
    assert Telemetry.from_cbor(data) == sample
    assert cbor2.loads(data)["t"] == TELEMETRY_TYPE
    assert Telemetry.from_cbor(Telemetry("gw-1", "m", 0, None).to_cbor()).power_w is None


@pytest.mark.parametrize("mutate, error", [
    (lambda m: m.update(p=MAX_POWER_W + 1), FieldError),
    (lambda m: m.update(p=1.5), EncodingError),  # floats are outside the contract's model
    (lambda m: m.update(p=True), FieldError),
    (lambda m: m.update(v=[1, 2, 3, 4]), FieldError),
    (lambda m: m.update(v=[-1]), FieldError),
    (lambda m: m.update(dev="bad id"), FieldError),
    (lambda m: m.update(meter=""), FieldError),
    (lambda m: m.update(time=-5), FieldError),
    (lambda m: m.update(t="meterchain/reading/v1"), FieldError),
    (lambda m: m.update(extra=1), EncodingError),
    (lambda m: m.pop("v"), EncodingError),
])
def test_malformed_samples_are_refused_with_typed_errors(mutate, error) -> None:  # type: ignore[no-untyped-def]
    obj = {"t": TELEMETRY_TYPE, "dev": "gw-1", "meter": "m-1", "time": 10, "p": 5, "v": [2300]}
    mutate(obj)
    with pytest.raises(error):
        Telemetry.from_cbor(cbor2.dumps(obj, canonical=True))


def test_non_deterministic_bytes_are_refused() -> None:
    obj = {"v": [], "t": TELEMETRY_TYPE, "dev": "gw-1", "meter": "m", "time": 1, "p": 0}
    with pytest.raises(EncodingError):
        Telemetry.from_cbor(cbor2.dumps(obj))  # insertion order, not canonical


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(EncodingError):
        Telemetry.from_cbor(data)
