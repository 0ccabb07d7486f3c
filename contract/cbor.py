"""Deterministic CBOR: the one byte form of every contract object.

RFC 8949 §4.2.1 core deterministic encoding, restricted to the data model the contract needs:
unsigned and negative integers, byte strings, text strings, arrays, maps with *text* keys,
``true``/``false``/``null``. No floats, no tags, no indefinite lengths.

With text-only map keys, cbor2's ``canonical=True`` key order (shorter encoded key first, then
bytewise) is exactly RFC 8949's bytewise order of the encoded keys, so one encoder serves both.
Decoding is strict: bytes are accepted only if re-encoding what they decode to gives the same
bytes. That one comparison rejects non-minimal lengths, unsorted or duplicate keys, indefinite
lengths, bignum tags and trailing bytes.
"""

from __future__ import annotations

from typing import Any

import cbor2
from meterchain.contract.errors import EncodingError

MAX_DEPTH = 8

CborValue = int | bytes | str | bool | None | list[Any] | dict[str, Any]


def encode(value: CborValue) -> bytes:
    """Encode ``value`` deterministically; refuse anything outside the contract's data model."""
    _check_model(value, depth=0)
    return cbor2.dumps(value, canonical=True)


def decode(data: bytes, *, what: str = "item", max_size: int | None = None) -> CborValue:
    """Decode bytes that must be in deterministic form, or raise :class:`EncodingError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError(f"{what}: expected bytes, got {type(data).__name__}", what=what)
    data = bytes(data)
    if max_size is not None and len(data) > max_size:
        raise EncodingError(
            f"{what}: {len(data)} bytes is over the limit of {max_size}", what=what, size=len(data)
        )
    if not data:
        raise EncodingError(f"{what}: empty input", what=what)
    try:
        value: CborValue = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, OverflowError) as exc:
        raise EncodingError(f"{what}: not valid CBOR ({exc})", what=what) from None
    _check_model(value, depth=0, what=what)
    if cbor2.dumps(value, canonical=True) != data:
        raise EncodingError(
            f"{what}: not in deterministic CBOR form (RFC 8949 §4.2.1)", what=what
        )
    return value


def _check_model(value: object, *, depth: int, what: str = "item") -> None:
    if depth > MAX_DEPTH:
        raise EncodingError(f"{what}: nested deeper than {MAX_DEPTH} levels", what=what)
    if value is None or isinstance(value, (bool, int, bytes, str)):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**64) <= value < 2**64:
            raise EncodingError(f"{what}: integer {value} does not fit 64 bits", what=what)
        return
    if isinstance(value, list):
        for item in value:
            _check_model(item, depth=depth + 1, what=what)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"{what}: map key {key!r} is not a text string", what=what)
            _check_model(item, depth=depth + 1, what=what)
        return
    raise EncodingError(
        f"{what}: {type(value).__name__} is not allowed (no floats, no tags)", what=what
    )
