"""HDLC framing (IEC 62056-46): golden frames, CRC, addresses, negotiation, reader, fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.errors import AddressError, CrcError, HdlcError
from meterchain.bridge.dlms.hdlc import (
    Control,
    FrameReader,
    FrameType,
    HdlcAddress,
    HdlcFrame,
    LinkParameters,
    Reassembler,
    crc16_x25,
    decode_address,
    decode_frame,
    encode_frame,
    segment_info,
    strip_llc,
)

from tests.support.dlms_strategies import addresses, frames

GOLDEN_GET = bytes.fromhex("7ea0190321107fdae6e600c001c100030100010800ff020032687e")


def test_crc16_x25_check_value() -> None:
    # The catalogue check value of CRC-16/X.25 (a.k.a. CRC-16/IBM-SDLC) over "123456789".
    assert crc16_x25(b"123456789") == 0x906E


def test_golden_get_frame_decodes_and_re_encodes() -> None:
    frame = decode_frame(GOLDEN_GET)
    assert frame.destination == HdlcAddress(1, None, 1)
    assert frame.source == HdlcAddress(16, None, 1)
    assert frame.control == Control(FrameType.I, True, 0, 0)
    assert frame.info == bytes.fromhex("e6e600c001c100030100010800ff0200")
    assert not frame.segmented
    assert encode_frame(frame) == GOLDEN_GET


def test_snrm_without_info_has_only_hcs() -> None:
    snrm = HdlcFrame(HdlcAddress(1), HdlcAddress(16), Control(FrameType.SNRM))
    # Same bytes gurux-dlms sends for SNRM from client 16 to server 1 without parameters.
    assert encode_frame(snrm) == bytes.fromhex("7ea0070321930f017e")


@pytest.mark.parametrize(
    ("address", "encoded"),
    [
        (HdlcAddress(1), "03"),
        (HdlcAddress(16), "21"),
        (HdlcAddress(1, 17), "0223"),
        (HdlcAddress(1, 0x3FFF, 4), "0002feff"),
        (HdlcAddress(0x3FFF, 0x1234, 4), "fefe4869"),
    ],
)
def test_address_encoding(address: HdlcAddress, encoded: str) -> None:
    assert address.encode().hex() == encoded
    decoded, end = decode_address(bytes.fromhex(encoded), 0)
    assert (decoded.upper, decoded.lower) == (address.upper, address.lower)
    assert end == len(encoded) // 2


def test_address_validation() -> None:
    with pytest.raises(AddressError):
        HdlcAddress(0x80)  # does not fit 7 bits in a 1-byte address
    with pytest.raises(AddressError):
        HdlcAddress(1, 2, 1)
    with pytest.raises(AddressError):
        HdlcAddress(1, 2, 3)
    with pytest.raises(HdlcError):
        decode_address(b"\x02\x04\x06", 0)  # 3 bytes: not a valid size
    with pytest.raises(HdlcError):
        decode_address(b"\x02\x04\x06\x08\x0a", 0)


def test_bad_crc_is_typed() -> None:
    broken = bytearray(GOLDEN_GET)
    broken[-3] ^= 0x01
    with pytest.raises(CrcError) as info:
        decode_frame(bytes(broken))
    assert "frame" in info.value.context
    broken = bytearray(GOLDEN_GET)
    broken[5] ^= 0x40  # control byte: the HCS no longer matches
    with pytest.raises(CrcError):
        decode_frame(bytes(broken))


def test_link_parameters_round_trip_and_defaults() -> None:
    params = LinkParameters(512, 256, 1, 7)
    assert LinkParameters.decode(params.encode()) == params
    assert LinkParameters.decode(b"") == LinkParameters()
    # A UA as meters send it: 1-byte info lengths and 4-byte windows.
    ua = bytes.fromhex("818012050180060180070400000001080400000001")
    assert LinkParameters.decode(ua) == LinkParameters(128, 128, 1, 1)
    with pytest.raises(HdlcError):
        LinkParameters.decode(b"\x81\x80\x10\x05")


def test_reader_splits_stream_and_resynchronises() -> None:
    reader = FrameReader()
    ua = encode_frame(HdlcFrame(HdlcAddress(16), HdlcAddress(1), Control(FrameType.UA)))
    reader.feed(b"\x00\xff" + GOLDEN_GET[:10])
    assert reader.frames() == []
    reader.feed(GOLDEN_GET[10:] + ua[1:] + b"garbage")  # second frame shares the flag
    got = reader.frames()
    assert [f.kind for f in got if isinstance(f, HdlcFrame)] == [FrameType.I, FrameType.UA]
    broken = bytearray(GOLDEN_GET)
    broken[-3] ^= 1
    reader.reset()
    reader.feed(bytes(broken) + GOLDEN_GET)
    got = reader.frames()
    assert isinstance(got[0], CrcError) and isinstance(got[1], HdlcFrame)


def test_segmentation_and_reassembly() -> None:
    payload = bytes(range(256)) * 3
    chunks = segment_info(payload, 100)
    assert all(len(c) <= 100 for c in chunks) and b"".join(chunks) == payload
    reassembler = Reassembler()
    for i, chunk in enumerate(chunks):
        frame = HdlcFrame(
            HdlcAddress(16), HdlcAddress(1), Control(FrameType.I), chunk, i < len(chunks) - 1
        )
        result = reassembler.add(decode_frame(encode_frame(frame)))
        assert (result is None) == (i < len(chunks) - 1)
    assert result == payload
    with pytest.raises(HdlcError):
        strip_llc(b"\xe6\xe6\x00\xc0", b"\xe6\xe7\x00")


@settings(max_examples=300, deadline=None)
@given(frames)
def test_every_frame_round_trips(frame: HdlcFrame) -> None:
    raw = encode_frame(frame)
    decoded = decode_frame(raw)
    assert decoded.info == frame.info and decoded.segmented == frame.segmented
    assert decoded.control == frame.control
    for got, sent in ((decoded.destination, frame.destination), (decoded.source, frame.source)):
        assert (got.upper, got.lower, got.encoded_size) == (
            sent.upper,
            sent.lower,
            sent.encoded_size,
        )
    assert encode_frame(decoded) == raw
    reader = FrameReader()
    reader.feed(raw + raw)
    assert reader.frames() == [decoded, decoded]


@settings(max_examples=200, deadline=None)
@given(addresses)
def test_every_address_round_trips(address: HdlcAddress) -> None:
    decoded, _ = decode_address(address.encode(), 0)
    assert decoded == address


def _valid_crcs(body: bytes) -> bytes:
    """Give fuzzed bytes a correct length, HCS and FCS so the fuzzer gets past the checksums."""
    fmt = 0xA000 | (len(body) + 4)
    head = fmt.to_bytes(2, "big") + body[:4]
    inner = head + crc16_x25(head).to_bytes(2, "little") + body[4:]
    inner = ((0xA000 | (len(inner) + 2)).to_bytes(2, "big")) + inner[2:]
    return b"\x7e" + inner + crc16_x25(inner).to_bytes(2, "little") + b"\x7e"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoders_raise_only_typed_errors(blob: bytes) -> None:
    for candidate in (blob, b"\x7e" + blob + b"\x7e", _valid_crcs(blob)):
        with contextlib.suppress(HdlcError):
            decode_frame(candidate)
        reader = FrameReader()
        reader.feed(candidate)
        for item in reader.frames():
            assert isinstance(item, (HdlcFrame, HdlcError))
    with contextlib.suppress(HdlcError):
        LinkParameters.decode(blob)
