"""Deterministic CBOR: the one byte form of every contract object.

RFC 8949 §4.2.1 core deterministic encoding, restricted to the data model the contract needs:
unsigned and negative integers, byte strings, text strings, arrays, maps with *text* keys,
``true``/``false``/``null``. No floats, no tags, no indefinite lengths.

With text-only map keys, cbor2's ``canonical=True`` key order (shorter encoded key first, then
bytewise) is exactly RFC 8949's bytewise order of the encoded keys, so one encoder serves both.
Decoding is strict: bytes are accepted only if re-encoding what they decode to gives the same
bytes, and every map's keys are in deterministic order. The comparison rejects non-minimal
lengths, duplicate keys, indefinite lengths, bignum tags and trailing bytes; the key order is
checked while the data model is (one pass), so the re-encoding is cbor2's plain, order-keeping
one, a third of the cost of its canonical mode, which sorts every map again (issue 20).
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
    _check_decoded(value, what)
    # Keys are known to be in order, so the order-keeping encoding is the deterministic one.
    if cbor2.dumps(value) != data:
        raise EncodingError(
            f"{what}: not in deterministic CBOR form (RFC 8949 §4.2.1)", what=what
        )
    return value


def byte_string_array(data: bytes, count: int) -> list[bytes] | None:
    """The items if ``data`` is exactly the deterministic encoding of an array of ``count``
    (< 24) byte strings, else None (then :func:`decode` says what is wrong).

    A reading message is such an array; reading its heads directly spares decoding, checking and
    re-encoding the whole message before the reading inside is decoded again (issue 20).
    """
    size = len(data)
    if not 0 < count < 24 or size < 1 + count or data[0] != 0x80 | count:
        return None
    items, at = [], 1
    for _ in range(count):
        if at >= size:
            return None
        head = data[at]
        info = head & 0x1F
        if head >> 5 != 2 or info > 27:  # not a byte string, or an indefinite or reserved length
            return None
        if info < 24:
            length, at = info, at + 1
        else:
            width = 1 << (info - 24)  # 1, 2, 4 or 8 bytes of length follow
            length = int.from_bytes(data[at + 1 : at + 1 + width], "big")
            if at + 1 + width > size or length < (24 if width == 1 else 1 << (4 * width)):
                return None  # truncated, or a longer head than the length needs
            at += 1 + width
        if at + length > size:
            return None
        items.append(data[at : at + length])
        at += length
    return items if at == size else None


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


_INT_LOW, _INT_HIGH = -(2**64), 2**64


def _key_order(keys: list[str]) -> bool:
    """Whether text keys are strictly in RFC 8949 order: encoded-key bytes, i.e. UTF-8 length,
    then UTF-8 bytes (which order as the code points do)."""
    if "".join(keys).isascii():  # UTF-8 length is the length; sorts run in C
        return keys == sorted(sorted(keys), key=len)  # a dict's keys are distinct
    encoded = [key.encode() for key in keys]
    return all((len(a), a) < (len(b), b) for a, b in zip(encoded, encoded[1:], strict=False))


def _check_decoded(value: object, what: str) -> None:
    """:func:`_check_model` for what ``cbor2.loads`` returned (exact built-in types), plus the
    map key order; the same rules, dispatched on the exact type in one pass."""
    kind = type(value)
    if kind is list or kind is dict:
        _check_container(value, 0, what)  # type: ignore[arg-type]
    else:
        _check_model(value, depth=0, what=what)


def _check_container(value: list[Any] | dict[Any, Any], depth: int, what: str) -> None:
    if type(value) is dict:
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                raise EncodingError(f"{what}: map key {key!r} is not a text string", what=what)
        if not _key_order(keys):
            raise EncodingError(f"{what}: map keys not in deterministic order (RFC 8949 §4.2.1)", what=what)
        items: Any = value.values()
    else:
        items = value
    if depth >= MAX_DEPTH and value:
        raise EncodingError(f"{what}: nested deeper than {MAX_DEPTH} levels", what=what)
    for item in items:
        kind = type(item)
        if kind is int:
            if not _INT_LOW <= item < _INT_HIGH:
                raise EncodingError(f"{what}: integer {item} does not fit 64 bits", what=what)
        elif kind is str or kind is bytes or kind is bool or item is None:
            continue
        elif kind is list or kind is dict:
            _check_container(item, depth + 1, what)
        else:
            _check_model(item, depth=depth + 1, what=what)  # raises, naming the type
