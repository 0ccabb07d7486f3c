"""APDUs: golden GET and association traces, round trips of every variant, decoder fuzzing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.apdu import (
    CONTEXT_LN,
    MECHANISM_LLS,
    Aare,
    Aarq,
    AcseServiceUser,
    AssociationResult,
    AttributeDescriptor,
    ConfirmedServiceError,
    DataAccessResult,
    ExceptionResponse,
    GetRequestNormal,
    GetResponseNormal,
    GetResponseWithDataBlock,
    InitiateRequest,
    InitiateResponse,
    Rlre,
    Rlrq,
    decode_apdu,
    encode_apdu,
)
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.errors import DlmsError
from meterchain.bridge.dlms.obis import Obis

from tests.support.dlms_strategies import get_apdus

# An LLS association request and a typical acceptance, as meters and head-end systems exchange them.
AARQ_LLS = bytes.fromhex(
    "6036a109060760857405080101"
    "8a0207808b0760857405080201ac0a80083132333435363738"
    "be10040e01000000065f1f0400007e1f04b0"
)
AARE_ACCEPTED = bytes.fromhex(
    "6129a109060760857405080101a203020100a305a103020100be10040e0800065f1f040000501f01f40007"
)


def test_golden_get_request() -> None:
    request = GetRequestNormal(0xC1, AttributeDescriptor(3, Obis.parse("1-0:1.8.0.255"), 2))
    assert encode_apdu(request).hex() == "c001c100030100010800ff0200"
    assert decode_apdu(bytes.fromhex("c001c100030100010800ff0200")) == request


def test_golden_get_response() -> None:
    response = decode_apdu(bytes.fromhex("c401c100060001e240"))
    assert response == GetResponseNormal(0xC1, Data(Tag.UINT32, 123456))


def test_aarq_with_low_level_security() -> None:
    aarq = decode_apdu(AARQ_LLS)
    assert aarq == Aarq(
        CONTEXT_LN, MECHANISM_LLS, b"12345678", None, InitiateRequest(0x007E1F, 0x04B0)
    )
    assert encode_apdu(aarq) == AARQ_LLS


def test_aare_accepted() -> None:
    aare = decode_apdu(AARE_ACCEPTED)
    assert isinstance(aare, Aare)
    assert aare.result == AssociationResult.ACCEPTED
    assert aare.user_information == InitiateResponse(0x00501F, 0x01F4)
    assert encode_apdu(aare) == AARE_ACCEPTED


def test_aare_rejected_and_service_errors_round_trip() -> None:
    for apdu in (
        Aare(
            result=AssociationResult.REJECTED_PERMANENT,
            diagnostic=AcseServiceUser.AUTHENTICATION_FAILURE,
        ),
        Aare(user_information=ConfirmedServiceError(1, 6, 1), diagnostic_source=2, diagnostic=1),
        Aarq(calling_ap_title=b"MTC12345"),
        Rlrq(0),
        Rlrq(None),
        Rlre(0),
        Rlre(None),
        ExceptionResponse(1, 2),
        ConfirmedServiceError(1, 6, 1),
        GetResponseWithDataBlock(0xC1, True, 3, DataAccessResult.DATA_BLOCK_NUMBER_INVALID),
    ):
        assert decode_apdu(encode_apdu(apdu)) == apdu


@pytest.mark.parametrize(
    "blob",
    [
        "",
        "c0",
        "c001c1000301",
        "c004c1",
        "c401c102",
        "c402c1ff00000001",
        "6003a1",
        "ff00",
        "6105a203020100",
        "c001c100030100010800ff0201",
        "c003c105",
    ],
)
def test_malformed_apdus_are_typed_errors(blob: str) -> None:
    with pytest.raises(DlmsError):
        decode_apdu(bytes.fromhex(blob))


def test_unknown_data_access_result_kept_as_integer() -> None:
    response = decode_apdu(bytes.fromhex("c401c10177"))
    assert isinstance(response, GetResponseNormal) and response.result == 0x77


@settings(max_examples=300, deadline=None)
@given(get_apdus)
def test_every_get_apdu_round_trips(apdu: object) -> None:
    raw = encode_apdu(apdu)  # type: ignore[arg-type]
    assert decode_apdu(raw) == apdu
    assert encode_apdu(decode_apdu(raw)) == raw


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=40),
    st.one_of(st.none(), st.binary(min_size=8, max_size=8)),
    st.integers(0, 2**24 - 1),
    st.integers(0, 0xFFFF),
)
def test_association_round_trips(
    password: bytes, title: bytes | None, conformance: int, pdu: int
) -> None:
    aarq = Aarq(CONTEXT_LN, MECHANISM_LLS, password, title, InitiateRequest(conformance, pdu))
    assert decode_apdu(encode_apdu(aarq)) == aarq
    aare = Aare(user_information=InitiateResponse(conformance, pdu), responding_ap_title=title)
    assert decode_apdu(encode_apdu(aare)) == aare


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        [
            b"",
            b"\x60",
            b"\x61",
            b"\x62",
            b"\xc0\x01",
            b"\xc0\x03",
            b"\xc4\x01",
            b"\xc4\x02",
            b"\xc4\x03",
            b"\xd8",
            b"\x0e",
        ]
    ),
    st.binary(max_size=120),
)
def test_fuzz_decode_apdu_raises_only_typed_errors(prefix: bytes, blob: bytes) -> None:
    with contextlib.suppress(DlmsError):
        decode_apdu(prefix + blob)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(
        [
            AARQ_LLS,
            AARE_ACCEPTED,
            bytes.fromhex("c001c100030100010800ff0200"),
            bytes.fromhex("c401c100060001e240"),
            bytes.fromhex("6203800100"),
        ]
    ),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3),
    st.integers(0, 80),
)
def test_fuzz_mutated_valid_apdus(golden: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(golden)
    for index, value in flips:
        blob[index % len(blob)] = value
    for candidate in (bytes(blob), bytes(blob[: len(blob) - cut % len(blob)])):
        with contextlib.suppress(DlmsError):
            decode_apdu(candidate)


def test_initiate_request_with_dedicated_key_and_quality_of_service() -> None:
    request = InitiateRequest(0x1F, 512, 6, bytes(range(16)), 3)
    aarq = Aarq(user_information=request)
    assert decode_apdu(encode_apdu(aarq)) == aarq
