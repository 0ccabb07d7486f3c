"""HDLC framing for DLMS/COSEM (IEC 62056-46): frames, CRC, addresses, negotiation, segmentation.

A frame on the wire::

    7E | format (2) | dest (1,2,4) | src (1,2,4) | control | HCS (2) | info ... | FCS (2) | 7E

The format field is ``1010 S LLLLLLLLLLL``: frame type 3, the segmentation bit and the 11-bit length
of everything between the flags. There is no byte stuffing: the length field delimits the frame, so a
0x7E inside the information field is legal. Both check sequences are CRC-16/X.25, sent LSB first;
a frame without information field has only the HCS (which then is its FCS).

Pure functions and a byte-stream ``FrameReader``; the link state lives in client.py and server.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from meterchain.bridge.dlms.errors import AddressError, CrcError, HdlcError

FLAG = 0x7E
MAX_FRAME_LENGTH = 0x7FF
DEFAULT_MAX_INFO_LENGTH = 128
DEFAULT_WINDOW_SIZE = 1

# LLC headers (IEC 62056-46 §6.4.4.4.3.6): destination LSAP, source LSAP, quality.
LLC_COMMAND = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X.25 (reflected poly 0x1021, init and xorout 0xFFFF), as used for HCS and FCS."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


# ---------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True, slots=True)
class HdlcAddress:
    """An HDLC address of 1, 2 or 4 bytes.

    A client address is one byte (``upper`` only, e.g. 16 for the public client). A server address
    has an upper part (the logical device, 1 = management) and an optional lower part (the physical
    device, often derived from the serial number): 2 bytes carry 7 bits of each, 4 bytes 14 bits.
    """

    upper: int
    lower: int | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        size = self.encoded_size
        if size not in (1, 2, 4):
            raise AddressError("address size must be 1, 2 or 4 bytes", size=size)
        if size == 1 and self.lower is not None:
            raise AddressError("a 1-byte address has no lower part", lower=self.lower)
        limit = 0x7F if size <= 2 else 0x3FFF
        for part in (self.upper, self.lower if self.lower is not None else 0):
            if not 0 <= part <= limit:
                raise AddressError("address part out of range", part=part, size=size)

    @property
    def encoded_size(self) -> int:
        if self.size is not None:
            return self.size
        if self.lower is None:
            return 1
        return 2 if self.upper <= 0x7F and self.lower <= 0x7F else 4

    def encode(self) -> bytes:
        size = self.encoded_size
        if size == 1:
            return bytes([(self.upper << 1) | 1])
        lower = self.lower or 0
        if size == 2:
            return bytes([self.upper << 1, (lower << 1) | 1])
        return bytes(
            [
                (self.upper >> 7) << 1,
                (self.upper & 0x7F) << 1,
                (lower >> 7) << 1,
                ((lower & 0x7F) << 1) | 1,
            ]
        )

    def __str__(self) -> str:
        return f"{self.upper}" if self.lower is None else f"{self.upper}/{self.lower}"


def decode_address(data: bytes | memoryview, offset: int) -> tuple[HdlcAddress, int]:
    """Decode an address starting at ``offset``: bytes run until one has its low bit set."""
    end = offset
    while True:
        if end >= len(data):
            raise HdlcError("address runs past the end of the frame", offset=offset)
        if data[end] & 1:
            break
        end += 1
        if end - offset >= 4:
            raise HdlcError("address longer than 4 bytes", offset=offset)
    parts = [b >> 1 for b in data[offset : end + 1]]
    size = len(parts)
    if size == 1:
        return HdlcAddress(parts[0], None, 1), end + 1
    if size == 2:
        return HdlcAddress(parts[0], parts[1], 2), end + 1
    if size == 4:
        return HdlcAddress((parts[0] << 7) | parts[1], (parts[2] << 7) | parts[3], 4), end + 1
    raise HdlcError("address must be 1, 2 or 4 bytes", size=size, offset=offset)


# ---------------------------------------------------------------------------------------------
# Control field


class FrameType(enum.Enum):
    I = "I"  # noqa: E741 - the standard's name
    RR = "RR"
    RNR = "RNR"
    SNRM = "SNRM"
    DISC = "DISC"
    UA = "UA"
    DM = "DM"
    FRMR = "FRMR"
    UI = "UI"


_U_FRAMES = {
    0x83: FrameType.SNRM,
    0x43: FrameType.DISC,
    0x63: FrameType.UA,
    0x0F: FrameType.DM,
    0x87: FrameType.FRMR,
    0x03: FrameType.UI,
}
_U_CODES = {kind: code for code, kind in _U_FRAMES.items()}
_POLL_FINAL = 0x10


@dataclass(frozen=True, slots=True)
class Control:
    """The decoded control byte: kind, poll/final bit and the sequence numbers (I and S frames)."""

    kind: FrameType
    poll_final: bool = True
    send_seq: int = 0
    recv_seq: int = 0

    def encode(self) -> int:
        pf = _POLL_FINAL if self.poll_final else 0
        if self.kind is FrameType.I:
            return ((self.recv_seq & 7) << 5) | pf | ((self.send_seq & 7) << 1)
        if self.kind is FrameType.RR:
            return ((self.recv_seq & 7) << 5) | pf | 0x01
        if self.kind is FrameType.RNR:
            return ((self.recv_seq & 7) << 5) | pf | 0x05
        return _U_CODES[self.kind] | pf

    @classmethod
    def decode(cls, byte: int) -> Control:
        pf = bool(byte & _POLL_FINAL)
        if byte & 1 == 0:
            return cls(FrameType.I, pf, (byte >> 1) & 7, byte >> 5)
        if byte & 3 == 1:
            kind = (byte >> 2) & 3
            if kind == 0:
                return cls(FrameType.RR, pf, 0, byte >> 5)
            if kind == 1:
                return cls(FrameType.RNR, pf, 0, byte >> 5)
            raise HdlcError("unsupported supervisory frame (REJ/SREJ)", control=byte)
        kind_u = _U_FRAMES.get(byte & ~_POLL_FINAL)
        if kind_u is None:
            raise HdlcError("unknown control field", control=byte)
        return cls(kind_u, pf)


# ---------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True, slots=True)
class HdlcFrame:
    """One HDLC frame. ``info`` is the raw information field (with the LLC header if it has one)."""

    destination: HdlcAddress
    source: HdlcAddress
    control: Control
    info: bytes = b""
    segmented: bool = False

    @property
    def kind(self) -> FrameType:
        return self.control.kind


def encode_frame(frame: HdlcFrame) -> bytes:
    """Encode a frame with flags, format field, HCS and (if it has information) FCS."""
    header = frame.destination.encode() + frame.source.encode() + bytes([frame.control.encode()])
    length = 2 + len(header) + 2 + (len(frame.info) + 2 if frame.info else 0)
    if length > MAX_FRAME_LENGTH:
        raise HdlcError("frame too long for the 11-bit length field", length=length)
    fmt = 0xA000 | (0x0800 if frame.segmented else 0) | length
    out = bytearray(fmt.to_bytes(2, "big"))
    out += header
    out += crc16_x25(out).to_bytes(2, "little")
    if frame.info:
        out += frame.info
        out += crc16_x25(out).to_bytes(2, "little")
    return b"\x7e" + bytes(out) + b"\x7e"


def decode_frame(data: bytes | memoryview) -> HdlcFrame:
    """Decode exactly one frame, flags included. Raises ``HdlcError``/``CrcError`` with context."""
    data = bytes(data)
    if len(data) < 9:
        raise HdlcError("frame too short", length=len(data), frame=data.hex())
    if data[0] != FLAG or data[-1] != FLAG:
        raise HdlcError("frame not delimited by 0x7E flags", frame=data.hex())
    fmt = int.from_bytes(data[1:3], "big")
    if fmt >> 12 != 0xA:
        raise HdlcError("frame format type is not 3", format=hex(fmt), frame=data.hex())
    length = fmt & 0x7FF
    if length != len(data) - 2:
        raise HdlcError(
            "length field does not match the frame",
            length=length,
            actual=len(data) - 2,
            frame=data.hex(),
        )
    body = data[1:-1]
    destination, pos = decode_address(body, 2)
    source, pos = decode_address(body, pos)
    if pos + 3 > len(body):
        raise HdlcError("frame ends inside its header", frame=data.hex())
    control = Control.decode(body[pos])
    pos += 1
    hcs = int.from_bytes(body[pos : pos + 2], "little")
    if crc16_x25(body[:pos]) != hcs:
        raise CrcError("header check sequence mismatch", frame=data.hex())
    pos += 2
    info = b""
    if pos < len(body):
        if len(body) - pos < 3:
            raise HdlcError("information field without room for an FCS", frame=data.hex())
        fcs = int.from_bytes(body[-2:], "little")
        if crc16_x25(body[:-2]) != fcs:
            raise CrcError("frame check sequence mismatch", frame=data.hex())
        info = body[pos:-2]
    return HdlcFrame(destination, source, control, info, bool(fmt & 0x0800))


class FrameReader:
    """Turns a byte stream into whole frames (or typed errors), resynchronising after garbage.

    Feed bytes as they arrive; ``frames()`` yields each complete ``HdlcFrame`` or the ``HdlcError``
    it failed with. An incomplete frame stays buffered until more bytes arrive or ``reset()``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def reset(self) -> None:
        """Drop a partial frame (after a timeout, the rest of it is not coming)."""
        self._buffer.clear()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def frames(self) -> list[HdlcFrame | HdlcError]:
        out: list[HdlcFrame | HdlcError] = []
        buf = self._buffer
        while True:
            start = buf.find(FLAG)
            if start < 0:
                buf.clear()
                return out
            if start:
                del buf[:start]
            if len(buf) < 3:
                return out
            fmt = (buf[1] << 8) | buf[2]
            if fmt >> 12 != 0xA:
                del buf[:1]  # a closing flag, or garbage: resynchronise on the next flag
                continue
            length = fmt & 0x7FF
            if length < 7:
                del buf[:1]
                continue
            if len(buf) < length + 2:
                return out
            if buf[length + 1] != FLAG:
                out.append(
                    HdlcError("frame not closed by a flag", frame=bytes(buf[: length + 2]).hex())
                )
                del buf[:1]
                continue
            raw = bytes(buf[: length + 2])
            # Leave the closing flag: it may open the next frame (IEC 62056-46 allows sharing).
            del buf[: length + 1]
            try:
                out.append(decode_frame(raw))
            except HdlcError as exc:
                out.append(exc)


# ---------------------------------------------------------------------------------------------
# SNRM/UA parameter negotiation (IEC 62056-46 §6.4.4.4.3.2)


@dataclass(frozen=True, slots=True)
class LinkParameters:
    """Maximum information field lengths and window sizes, from the sender's point of view."""

    max_info_tx: int = DEFAULT_MAX_INFO_LENGTH
    max_info_rx: int = DEFAULT_MAX_INFO_LENGTH
    window_tx: int = DEFAULT_WINDOW_SIZE
    window_rx: int = DEFAULT_WINDOW_SIZE

    def encode(self) -> bytes:
        """The information field of an SNRM or UA: format 0x81, group 0x80, then four parameters."""
        params = bytearray()
        for ident, value, width in (
            (0x05, self.max_info_tx, 2 if self.max_info_tx > 0xFF else 1),
            (0x06, self.max_info_rx, 2 if self.max_info_rx > 0xFF else 1),
            (0x07, self.window_tx, 4),
            (0x08, self.window_rx, 4),
        ):
            params += bytes([ident, width]) + value.to_bytes(width, "big")
        return bytes([0x81, 0x80, len(params)]) + bytes(params)

    @classmethod
    def decode(cls, info: bytes) -> LinkParameters:
        """Decode negotiation parameters; absent ones keep their defaults (128 bytes, window 1)."""
        if not info:
            return cls()
        if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80:
            raise HdlcError("negotiation field must start with 81 80", info=info.hex())
        end = 3 + info[2]
        if end > len(info):
            raise HdlcError("negotiation group longer than the field", info=info.hex())
        values = {0x05: DEFAULT_MAX_INFO_LENGTH, 0x06: DEFAULT_MAX_INFO_LENGTH, 0x07: 1, 0x08: 1}
        pos = 3
        while pos < end:
            if pos + 2 > end:
                raise HdlcError("truncated negotiation parameter", info=info.hex())
            ident, width = info[pos], info[pos + 1]
            if not 1 <= width <= 4 or pos + 2 + width > end:
                raise HdlcError("bad negotiation parameter width", ident=ident, width=width)
            value = int.from_bytes(info[pos + 2 : pos + 2 + width], "big")
            if ident in values:
                values[ident] = value
            pos += 2 + width
        result = cls(values[0x05], values[0x06], values[0x07], values[0x08])
        if (
            min(result.max_info_tx, result.max_info_rx) < 32
            or min(result.window_tx, result.window_rx) < 1
        ):
            raise HdlcError("negotiated values out of range", parameters=result)
        return result


def segment_info(payload: bytes, max_info: int) -> list[bytes]:
    """Split an LLC-PDU into information fields of at most ``max_info`` bytes (at least one)."""
    if max_info < 1:
        raise HdlcError("max information length must be positive", max_info=max_info)
    return [payload[i : i + max_info] for i in range(0, len(payload), max_info)] or [b""]


@dataclass(slots=True)
class Reassembler:
    """Collects the information fields of segmented I-frames until the final one."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, frame: HdlcFrame) -> bytes | None:
        """Add an I-frame's info; return the whole LLC-PDU once the last (unsegmented) frame is in."""
        self.parts.append(frame.info)
        self.size += len(frame.info)
        if frame.segmented:
            return None
        whole = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        return whole

    @property
    def in_progress(self) -> bool:
        return bool(self.parts)


def strip_llc(payload: bytes, expected: bytes) -> bytes:
    """Remove the 3-byte LLC header of a reassembled I-frame payload, checking it."""
    if payload[:3] != expected:
        raise HdlcError(
            "missing or wrong LLC header", expected=expected.hex(), got=payload[:3].hex()
        )
    return payload[3:]
