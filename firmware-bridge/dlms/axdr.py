"""A-XDR encoding of COSEM ``Data`` (IEC 62056-6-2 / DLMS UA 1000-2 "Green Book" §9.5).

A value is a tag byte followed by its content; arrays and structures carry an element count in
BER length form (one byte below 0x80, else 0x8N followed by N bytes). ``Data`` keeps the tag, so a
decoded value re-encodes to the same bytes. Date-time values (tag 25, or the 12-byte octet strings
COSEM attributes use) are ``DateTime`` (see cosem.py for their meaning in UTC).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

from meterchain.bridge.dlms.errors import AxdrError

MAX_DEPTH = 32  # nesting limit: a fuzzer must not drive the decoder into a RecursionError


class Tag(enum.IntEnum):
    NULL = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOLEAN = 3
    BIT_STRING = 4
    INT32 = 5  # double-long
    UINT32 = 6  # double-long-unsigned
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    BCD = 13
    INT8 = 15  # integer
    INT16 = 16  # long
    UINT8 = 17  # unsigned
    UINT16 = 18  # long-unsigned
    INT64 = 20  # long64
    UINT64 = 21  # long64-unsigned
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27
    DONT_CARE = 255


# tag -> (struct format, min, max) for fixed-width integers
_INTEGERS: dict[Tag, tuple[str, int, int]] = {
    Tag.INT8: (">b", -(2**7), 2**7 - 1),
    Tag.INT16: (">h", -(2**15), 2**15 - 1),
    Tag.INT32: (">i", -(2**31), 2**31 - 1),
    Tag.INT64: (">q", -(2**63), 2**63 - 1),
    Tag.UINT8: (">B", 0, 2**8 - 1),
    Tag.UINT16: (">H", 0, 2**16 - 1),
    Tag.UINT32: (">I", 0, 2**32 - 1),
    Tag.UINT64: (">Q", 0, 2**64 - 1),
    Tag.ENUM: (">B", 0, 2**8 - 1),
    Tag.BCD: (">B", 0, 2**8 - 1),
}
_INT_STRUCTS = {tag: struct.Struct(fmt) for tag, (fmt, _, _) in _INTEGERS.items()}
_FIXED_OCTETS = {Tag.DATE: 5, Tag.TIME: 4}


@dataclass(frozen=True, slots=True)
class DateTime:
    """The 12-byte COSEM date-time, field by field, exactly as sent (0xFF/0xFFFF = not specified).

    ``deviation`` is minutes with UTC = local time + deviation (None when 0x8000, unspecified);
    ``status`` is the clock status byte (bit 0 invalid, 1 doubtful, 2 different base, 3 invalid
    status, 7 daylight saving active; 0xFF = not specified).
    """

    year: int = 0xFFFF
    month: int = 0xFF
    day: int = 0xFF
    weekday: int = 0xFF
    hour: int = 0xFF
    minute: int = 0xFF
    second: int = 0xFF
    hundredths: int = 0xFF
    deviation: int | None = None
    status: int = 0xFF

    def encode(self) -> bytes:
        deviation = 0x8000 if self.deviation is None else self.deviation & 0xFFFF
        try:
            return struct.pack(
                ">HBBBBBBBHB",
                self.year,
                self.month,
                self.day,
                self.weekday,
                self.hour,
                self.minute,
                self.second,
                self.hundredths,
                deviation,
                self.status,
            )
        except struct.error as exc:
            raise AxdrError("date-time field out of range", value=self) from exc

    @classmethod
    def decode(cls, raw: bytes) -> DateTime:
        if len(raw) != 12:
            raise AxdrError("date-time must be 12 bytes", length=len(raw), raw=raw.hex())
        year, month, day, wd, hour, minute, second, hund, dev, status = struct.unpack(
            ">HBBBBBBBHB", raw
        )
        deviation = None if dev == 0x8000 else (dev - 0x10000 if dev & 0x8000 else dev)
        return cls(year, month, day, wd, hour, minute, second, hund, deviation, status)


Value = Union[None, bool, int, float, bytes, str, "DateTime", tuple["Data", ...], "BitString"]


@dataclass(frozen=True, slots=True)
class BitString:
    """A bit string: ``length`` bits, most significant bit of ``data[0]`` first."""

    length: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) != (self.length + 7) // 8:
            raise AxdrError("bit string byte count does not match its length", length=self.length)


@dataclass(frozen=True, slots=True)
class Data:
    """One tagged COSEM value; ``value`` is a tuple of ``Data`` for arrays and structures."""

    tag: Tag
    value: Value = None

    # Constructors that say the DLMS type at the call site.
    @classmethod
    def null(cls) -> Data:
        return cls(Tag.NULL, None)

    @classmethod
    def array(cls, items: list[Data] | tuple[Data, ...]) -> Data:
        return cls(Tag.ARRAY, tuple(items))

    @classmethod
    def structure(cls, items: list[Data] | tuple[Data, ...]) -> Data:
        return cls(Tag.STRUCTURE, tuple(items))

    @classmethod
    def octets(cls, value: bytes) -> Data:
        return cls(Tag.OCTET_STRING, bytes(value))

    @classmethod
    def integer(cls, tag: Tag, value: int) -> Data:
        if tag not in _INTEGERS:
            raise AxdrError("not an integer tag", tag=tag)
        return cls(tag, value)

    @property
    def items(self) -> tuple[Data, ...]:
        """The elements of an array or structure (raises for any other type)."""
        if self.tag not in (Tag.ARRAY, Tag.STRUCTURE):
            raise AxdrError("value is not an array or structure", tag=self.tag.name)
        assert isinstance(self.value, tuple)
        return self.value

    def as_int(self) -> int:
        """The value of an integer, enum or BCD (raises for anything else)."""
        if self.tag not in _INTEGERS or isinstance(self.value, bool):
            raise AxdrError("value is not an integer", tag=self.tag.name)
        assert isinstance(self.value, int)
        return self.value

    def as_bytes(self) -> bytes:
        if self.tag is Tag.OCTET_STRING and isinstance(self.value, bytes):
            return self.value
        if self.tag is Tag.OCTET_STRING and isinstance(self.value, DateTime):
            return self.value.encode()
        raise AxdrError("value is not an octet string", tag=self.tag.name)


# ---------------------------------------------------------------------------------------------
# Lengths


def encode_length(length: int) -> bytes:
    """BER definite length: short form below 128, else 0x80|n followed by n big-endian bytes."""
    if length < 0:
        raise AxdrError("negative length", length=length)
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(raw) > 4:
        raise AxdrError("length too large", length=length)
    return bytes([0x80 | len(raw)]) + raw


def decode_length(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a BER length at ``pos``; return (length, position after it)."""
    if pos >= len(data):
        raise AxdrError("missing length byte", offset=pos)
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count == 0 or count > 4:
        raise AxdrError("unsupported length form", byte=first, offset=pos)
    if pos + 1 + count > len(data):
        raise AxdrError("length runs past the end", offset=pos)
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_data(value: Data) -> bytes:
    """Encode one value with its tag."""
    out = bytearray()
    _encode_into(value, out, 0)
    return bytes(out)


def _encode_into(value: Data, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise AxdrError("value nested too deeply", depth=depth)
    tag, v = value.tag, value.value
    out.append(tag)
    if tag in (Tag.NULL, Tag.DONT_CARE):
        return
    if tag in (Tag.ARRAY, Tag.STRUCTURE):
        if not isinstance(v, tuple):
            raise AxdrError("array/structure needs a tuple of Data", tag=tag.name)
        out += encode_length(len(v))
        for item in v:
            _encode_into(item, out, depth + 1)
        return
    if tag is Tag.BOOLEAN:
        if not isinstance(v, bool):
            raise AxdrError("boolean needs a bool", value=v)
        out.append(0xFF if v else 0x00)
        return
    if tag in _INTEGERS:
        _, low, high = _INTEGERS[tag]
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
            raise AxdrError("integer out of range for its type", tag=tag.name, value=v)
        out += _INT_STRUCTS[tag].pack(v)
        return
    if tag is Tag.OCTET_STRING:
        raw = v.encode() if isinstance(v, DateTime) else v
        if not isinstance(raw, bytes):
            raise AxdrError("octet-string needs bytes", value=v)
        out += encode_length(len(raw)) + raw
        return
    if tag in (Tag.VISIBLE_STRING, Tag.UTF8_STRING):
        if not isinstance(v, str):
            raise AxdrError("string needs str", tag=tag.name, value=v)
        raw = v.encode("utf-8" if tag is Tag.UTF8_STRING else "latin-1", errors="strict")
        out += encode_length(len(raw)) + raw
        return
    if tag is Tag.BIT_STRING:
        if not isinstance(v, BitString):
            raise AxdrError("bit-string needs BitString", value=v)
        out += encode_length(v.length) + v.data
        return
    if tag is Tag.FLOAT32 or tag is Tag.FLOAT64:
        if not isinstance(v, float):
            raise AxdrError("float needs float", value=v)
        out += struct.pack(">f" if tag is Tag.FLOAT32 else ">d", v)
        return
    if tag is Tag.DATE_TIME:
        if not isinstance(v, DateTime):
            raise AxdrError("date-time needs DateTime", value=v)
        out += v.encode()
        return
    if tag in _FIXED_OCTETS:
        if not isinstance(v, bytes) or len(v) != _FIXED_OCTETS[tag]:
            raise AxdrError("date/time needs fixed-size bytes", tag=tag.name, value=v)
        out += v
        return
    raise AxdrError("unsupported tag", tag=tag)


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_data(data: bytes | memoryview, pos: int = 0) -> tuple[Data, int]:
    """Decode one value at ``pos``; return it and the position after it. Raises ``AxdrError``."""
    try:
        return _decode(data, pos, 0)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise AxdrError("truncated or malformed A-XDR value", offset=pos) from exc


def decode_data_exact(data: bytes) -> Data:
    """Decode a buffer that must hold exactly one value."""
    value, end = decode_data(data)
    if end != len(data):
        raise AxdrError("trailing bytes after value", extra=len(data) - end, data=data[:64].hex())
    return value


def _take(data: bytes | memoryview, pos: int, count: int) -> bytes:
    end = pos + count
    if end > len(data):
        raise AxdrError(
            "value runs past the end", offset=pos, needed=count, available=len(data) - pos
        )
    return bytes(data[pos:end])


def _decode(data: bytes | memoryview, pos: int, depth: int) -> tuple[Data, int]:
    if depth > MAX_DEPTH:
        raise AxdrError("value nested too deeply", offset=pos)
    if pos >= len(data):
        raise AxdrError("missing tag", offset=pos)
    raw_tag = data[pos]
    try:
        tag = Tag(raw_tag)
    except ValueError:
        raise AxdrError("unknown data tag", tag=raw_tag, offset=pos) from None
    pos += 1
    if tag in _INT_STRUCTS:
        st = _INT_STRUCTS[tag]
        if pos + st.size > len(data):
            raise AxdrError("integer runs past the end", tag=tag.name, offset=pos)
        return Data(tag, st.unpack_from(data, pos)[0]), pos + st.size
    if tag in (Tag.ARRAY, Tag.STRUCTURE):
        count, pos = decode_length(data, pos)
        if count > len(data) - pos:  # every element takes at least one byte
            raise AxdrError("element count exceeds the bytes left", count=count, offset=pos)
        items = []
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return Data(tag, tuple(items)), pos
    if tag is Tag.OCTET_STRING:
        length, pos = decode_length(data, pos)
        return Data(tag, _take(data, pos, length)), pos + length
    if tag in (Tag.NULL, Tag.DONT_CARE):
        return Data(tag, None), pos
    if tag is Tag.BOOLEAN:
        return Data(tag, _take(data, pos, 1)[0] != 0), pos + 1
    if tag in (Tag.VISIBLE_STRING, Tag.UTF8_STRING):
        length, pos = decode_length(data, pos)
        raw = _take(data, pos, length)
        text = raw.decode("utf-8" if tag is Tag.UTF8_STRING else "latin-1")
        return Data(tag, text), pos + length
    if tag is Tag.BIT_STRING:
        bits, pos = decode_length(data, pos)
        nbytes = (bits + 7) // 8
        return Data(tag, BitString(bits, _take(data, pos, nbytes))), pos + nbytes
    if tag is Tag.FLOAT32:
        return Data(tag, struct.unpack(">f", _take(data, pos, 4))[0]), pos + 4
    if tag is Tag.FLOAT64:
        return Data(tag, struct.unpack(">d", _take(data, pos, 8))[0]), pos + 8
    if tag is Tag.DATE_TIME:
        return Data(tag, DateTime.decode(_take(data, pos, 12))), pos + 12
    size = _FIXED_OCTETS.get(tag)
    if size is not None:
        return Data(tag, _take(data, pos, size)), pos + size
    raise AxdrError("unsupported data tag", tag=tag.name, offset=pos - 1)
