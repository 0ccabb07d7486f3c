"""APDUs: ACSE association (AARQ/AARE/RLRQ/RLRE, BER) and xDLMS GET (A-XDR), both directions.

ACSE APDUs are BER (IEC 62056-5-3 §9.4 / ISO 8650); the xDLMS InitiateRequest/-Response inside the
user-information field and every GET APDU are A-XDR. ``encode_apdu``/``decode_apdu`` convert
between bytes and the dataclasses below; decoders raise ``ApduError`` with context on anything
malformed, never anything else.

Security: the application-context and mechanism names, the calling AP title (system title) and the
authentication values are plain fields, so HLS (mechanism 5, GMAC) and ciphered contexts slot in
without changing this module's shape; ciphered APDUs would wrap/unwrap around ``encode_apdu``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from meterchain.bridge.dlms.axdr import Data, decode_data, decode_length, encode_data, encode_length
from meterchain.bridge.dlms.errors import ApduError, AxdrError, CosemValueError
from meterchain.bridge.dlms.obis import Obis

# Application context names 2.16.756.5.8.1.x and mechanism names 2.16.756.5.8.2.x (BER-encoded).
CONTEXT_LN = bytes.fromhex("60857405080101")
CONTEXT_SN = bytes.fromhex("60857405080102")
CONTEXT_LN_CIPHERED = bytes.fromhex("60857405080103")
CONTEXT_SN_CIPHERED = bytes.fromhex("60857405080104")
MECHANISM_LOWEST = bytes.fromhex("60857405080200")
MECHANISM_LLS = bytes.fromhex("60857405080201")
MECHANISM_HLS = bytes.fromhex("60857405080202")
MECHANISM_HLS_GMAC = bytes.fromhex("60857405080205")

DLMS_VERSION = 6
VAA_NAME_LN = 0x0007


class Conformance(enum.IntFlag):
    """The 24-bit conformance block; bit 0 of the standard is the most significant bit."""

    GENERAL_PROTECTION = 1 << 22
    GENERAL_BLOCK_TRANSFER = 1 << 21
    ATTRIBUTE0_WITH_SET = 1 << 15
    PRIORITY_MGMT = 1 << 14
    ATTRIBUTE0_WITH_GET = 1 << 13
    BLOCK_TRANSFER_WITH_GET = 1 << 12
    BLOCK_TRANSFER_WITH_SET = 1 << 11
    BLOCK_TRANSFER_WITH_ACTION = 1 << 10
    MULTIPLE_REFERENCES = 1 << 9
    INFORMATION_REPORT = 1 << 8
    DATA_NOTIFICATION = 1 << 7
    ACCESS = 1 << 6
    PARAMETERIZED_ACCESS = 1 << 5
    GET = 1 << 4
    SET = 1 << 3
    SELECTIVE_ACCESS = 1 << 2
    EVENT_NOTIFICATION = 1 << 1
    ACTION = 1 << 0


CLIENT_CONFORMANCE = (
    Conformance.PRIORITY_MGMT
    | Conformance.BLOCK_TRANSFER_WITH_GET
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.GET
    | Conformance.SELECTIVE_ACCESS
)


class AssociationResult(enum.IntEnum):
    ACCEPTED = 0
    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class AcseServiceUser(enum.IntEnum):
    NULL = 0
    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED = 11
    AUTHENTICATION_MECHANISM_NAME_REQUIRED = 12
    AUTHENTICATION_FAILURE = 13
    AUTHENTICATION_REQUIRED = 14


class DataAccessResult(enum.IntEnum):
    SUCCESS = 0
    HARDWARE_FAULT = 1
    TEMPORARY_FAILURE = 2
    READ_WRITE_DENIED = 3
    OBJECT_UNDEFINED = 4
    OBJECT_CLASS_INCONSISTENT = 9
    OBJECT_UNAVAILABLE = 11
    TYPE_UNMATCHED = 12
    SCOPE_OF_ACCESS_VIOLATED = 13
    DATA_BLOCK_UNAVAILABLE = 14
    LONG_GET_ABORTED = 15
    NO_LONG_GET_IN_PROGRESS = 16
    LONG_SET_ABORTED = 17
    NO_LONG_SET_IN_PROGRESS = 18
    DATA_BLOCK_NUMBER_INVALID = 19
    OTHER_REASON = 250


def data_access_result(code: int) -> DataAccessResult | int:
    """The enum member for ``code``, or the bare integer for codes this module does not name."""
    try:
        return DataAccessResult(code)
    except ValueError:
        return code


# ---------------------------------------------------------------------------------------------
# ACSE


@dataclass(frozen=True, slots=True)
class InitiateRequest:
    conformance: int = int(CLIENT_CONFORMANCE)
    max_receive_pdu_size: int = 0xFFFF
    dlms_version: int = DLMS_VERSION
    dedicated_key: bytes | None = None
    quality_of_service: int | None = None


@dataclass(frozen=True, slots=True)
class InitiateResponse:
    conformance: int
    max_receive_pdu_size: int
    dlms_version: int = DLMS_VERSION
    vaa_name: int = VAA_NAME_LN
    quality_of_service: int | None = None


@dataclass(frozen=True, slots=True)
class ConfirmedServiceError:
    """xDLMS ConfirmedServiceError (tag 14): which service failed, the error group and its value."""

    service: int
    error_group: int
    value: int


@dataclass(frozen=True, slots=True)
class Aarq:
    application_context: bytes = CONTEXT_LN
    mechanism: bytes | None = None
    calling_authentication: bytes | None = None
    calling_ap_title: bytes | None = None
    user_information: InitiateRequest | bytes = field(default_factory=InitiateRequest)


@dataclass(frozen=True, slots=True)
class Aare:
    application_context: bytes = CONTEXT_LN
    result: int = AssociationResult.ACCEPTED
    diagnostic_source: int = 1  # 1 acse-service-user, 2 acse-service-provider
    diagnostic: int = AcseServiceUser.NULL
    responding_ap_title: bytes | None = None
    mechanism: bytes | None = None
    responding_authentication: bytes | None = None
    user_information: InitiateResponse | ConfirmedServiceError | bytes | None = None


@dataclass(frozen=True, slots=True)
class Rlrq:
    reason: int | None = 0


@dataclass(frozen=True, slots=True)
class Rlre:
    reason: int | None = 0


# ---------------------------------------------------------------------------------------------
# xDLMS GET


@dataclass(frozen=True, slots=True)
class AttributeDescriptor:
    class_id: int
    instance: Obis
    attribute: int


@dataclass(frozen=True, slots=True)
class AccessSelection:
    selector: int
    parameters: Data


@dataclass(frozen=True, slots=True)
class GetRequestNormal:
    invoke_id_and_priority: int
    descriptor: AttributeDescriptor
    access: AccessSelection | None = None


@dataclass(frozen=True, slots=True)
class GetRequestNext:
    invoke_id_and_priority: int
    block_number: int


@dataclass(frozen=True, slots=True)
class GetRequestWithList:
    invoke_id_and_priority: int
    items: tuple[tuple[AttributeDescriptor, AccessSelection | None], ...]


GetResult = Data | DataAccessResult | int  # Data on success, else the data-access-result


@dataclass(frozen=True, slots=True)
class GetResponseNormal:
    invoke_id_and_priority: int
    result: GetResult


@dataclass(frozen=True, slots=True)
class GetResponseWithDataBlock:
    invoke_id_and_priority: int
    last_block: bool
    block_number: int
    raw: bytes | DataAccessResult | int  # raw-data on success, else the data-access-result


@dataclass(frozen=True, slots=True)
class GetResponseWithList:
    invoke_id_and_priority: int
    results: tuple[GetResult, ...]


@dataclass(frozen=True, slots=True)
class ExceptionResponse:
    state_error: int
    service_error: int


Apdu = (
    Aarq
    | Aare
    | Rlrq
    | Rlre
    | GetRequestNormal
    | GetRequestNext
    | GetRequestWithList
    | GetResponseNormal
    | GetResponseWithDataBlock
    | GetResponseWithList
    | ExceptionResponse
    | ConfirmedServiceError
)

TAG_AARQ, TAG_AARE, TAG_RLRQ, TAG_RLRE = 0x60, 0x61, 0x62, 0x63
TAG_GET_REQUEST, TAG_GET_RESPONSE = 0xC0, 0xC4
TAG_EXCEPTION_RESPONSE, TAG_CONFIRMED_SERVICE_ERROR = 0xD8, 0x0E
TAG_INITIATE_REQUEST, TAG_INITIATE_RESPONSE = 0x01, 0x08


# ---------------------------------------------------------------------------------------------
# BER helpers


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content


def _parse_tlvs(data: bytes, context: str) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise ApduError("multi-byte BER tags are not used in ACSE", apdu=context, tag=tag)
        try:
            length, start = _ber_length(data, pos + 1)
        except AxdrError as exc:
            raise ApduError("bad BER length", apdu=context, offset=pos) from exc
        end = start + length
        if end > len(data):
            raise ApduError("BER element runs past the end", apdu=context, tag=hex(tag))
        out.append((tag, data[start:end]))
        pos = end
    return out


def _ber_length(data: bytes, pos: int) -> tuple[int, int]:
    return decode_length(data, pos)


def _ber_integer(content: bytes, what: str) -> int:
    """An INTEGER wrapped as 02 len value (result and diagnostic fields)."""
    elements = _parse_tlvs(content, what)
    if len(elements) != 1 or elements[0][0] != 0x02 or not 1 <= len(elements[0][1]) <= 4:
        raise ApduError("expected one BER INTEGER", field=what, content=content.hex())
    return int.from_bytes(elements[0][1], "big", signed=True)


def _oid_inside(content: bytes, what: str) -> bytes:
    elements = _parse_tlvs(content, what)
    if len(elements) != 1 or elements[0][0] != 0x06:
        raise ApduError("expected an OBJECT IDENTIFIER", field=what, content=content.hex())
    return elements[0][1]


def _octets_inside(content: bytes, tag: int, what: str) -> bytes:
    elements = _parse_tlvs(content, what)
    if len(elements) != 1 or elements[0][0] != tag:
        raise ApduError("unexpected element", field=what, content=content.hex())
    return elements[0][1]


def _conformance_block(conformance: int) -> bytes:
    return b"\x5f\x1f\x04\x00" + conformance.to_bytes(3, "big")


def _read_conformance(data: bytes, pos: int) -> tuple[int, int]:
    if data[pos : pos + 4] != b"\x5f\x1f\x04\x00" or pos + 7 > len(data):
        raise ApduError("malformed conformance block", data=data.hex())
    return int.from_bytes(data[pos + 4 : pos + 7], "big"), pos + 7


def encode_initiate_request(req: InitiateRequest) -> bytes:
    out = bytearray([TAG_INITIATE_REQUEST])
    if req.dedicated_key is None:
        out.append(0)
    else:
        out += b"\x01" + encode_length(len(req.dedicated_key)) + req.dedicated_key
    out.append(0)  # response-allowed: DEFAULT TRUE, so absent
    out += b"\x00" if req.quality_of_service is None else bytes([1, req.quality_of_service])
    out.append(req.dlms_version)
    out += _conformance_block(req.conformance)
    out += req.max_receive_pdu_size.to_bytes(2, "big")
    return bytes(out)


def _optional_byte(data: bytes, pos: int) -> tuple[int | None, int]:
    """An A-XDR OPTIONAL one-byte field: 00 (absent) or 01 followed by the value."""
    if data[pos]:
        return data[pos + 1], pos + 2
    return None, pos + 1


def decode_initiate_request(data: bytes) -> InitiateRequest:
    try:
        if data[0] != TAG_INITIATE_REQUEST:
            raise ApduError("not an InitiateRequest", data=data.hex())
        key = None
        pos = 2
        if data[1]:  # dedicated-key OPTIONAL: 01, then an octet string
            length, pos = decode_length(data, 2)
            key = bytes(data[pos : pos + length])
            pos += length
        _, pos = _optional_byte(data, pos)  # response-allowed, DEFAULT TRUE
        qos, pos = _optional_byte(data, pos)
        version = data[pos]
        conformance, pos = _read_conformance(data, pos + 1)
        if pos + 2 != len(data):
            raise ApduError("InitiateRequest has a wrong length", data=data.hex())
        max_pdu = int.from_bytes(data[pos : pos + 2], "big")
    except (IndexError, AxdrError) as exc:
        raise ApduError("truncated InitiateRequest", data=data.hex()) from exc
    return InitiateRequest(conformance, max_pdu, version, key, qos)


def encode_initiate_response(resp: InitiateResponse) -> bytes:
    out = bytearray([TAG_INITIATE_RESPONSE])
    out += b"\x00" if resp.quality_of_service is None else bytes([1, resp.quality_of_service])
    out.append(resp.dlms_version)
    out += _conformance_block(resp.conformance)
    out += resp.max_receive_pdu_size.to_bytes(2, "big") + resp.vaa_name.to_bytes(2, "big")
    return bytes(out)


def decode_initiate_response(data: bytes) -> InitiateResponse:
    try:
        if data[0] != TAG_INITIATE_RESPONSE:
            raise ApduError("not an InitiateResponse", data=data.hex())
        qos, pos = _optional_byte(data, 1)
        version = data[pos]
        conformance, pos = _read_conformance(data, pos + 1)
        if pos + 4 != len(data):
            raise ApduError("InitiateResponse has a wrong length", data=data.hex())
        max_pdu = int.from_bytes(data[pos : pos + 2], "big")
        vaa = int.from_bytes(data[pos + 2 : pos + 4], "big")
    except IndexError as exc:
        raise ApduError("truncated InitiateResponse", data=data.hex()) from exc
    return InitiateResponse(conformance, max_pdu, version, vaa, qos)


def _decode_confirmed_service_error(data: bytes) -> ConfirmedServiceError:
    if len(data) != 4 or data[0] != TAG_CONFIRMED_SERVICE_ERROR:
        raise ApduError("malformed confirmed-service-error", data=data.hex())
    return ConfirmedServiceError(data[1], data[2], data[3])


def _encode_aarq(aarq: Aarq) -> bytes:
    body = _tlv(0xA1, _tlv(0x06, aarq.application_context))
    if aarq.calling_ap_title is not None:
        body += _tlv(0xA6, _tlv(0x04, aarq.calling_ap_title))
    if aarq.mechanism is not None:
        body += _tlv(0x8A, b"\x07\x80")  # sender-acse-requirements: authentication
        body += _tlv(0x8B, aarq.mechanism)
        if aarq.calling_authentication is not None:
            body += _tlv(0xAC, _tlv(0x80, aarq.calling_authentication))
    info = aarq.user_information
    raw = encode_initiate_request(info) if isinstance(info, InitiateRequest) else info
    body += _tlv(0xBE, _tlv(0x04, raw))
    return _tlv(TAG_AARQ, body)


def _decode_aarq(content: bytes) -> Aarq:
    context = mechanism = auth = title = None
    info: InitiateRequest | bytes | None = None
    for tag, value in _parse_tlvs(content, "AARQ"):
        if tag == 0xA1:
            context = _oid_inside(value, "application-context-name")
        elif tag == 0xA6:
            title = _octets_inside(value, 0x04, "calling-AP-title")
        elif tag == 0x8B:
            mechanism = value
        elif tag == 0xAC:
            elements = _parse_tlvs(value, "calling-authentication-value")
            if len(elements) != 1 or elements[0][0] not in (0x80, 0x81):
                raise ApduError("malformed calling-authentication-value", content=value.hex())
            auth = elements[0][1]
        elif tag == 0xBE:
            raw = _octets_inside(value, 0x04, "user-information")
            info = decode_initiate_request(raw) if raw[:1] == bytes([TAG_INITIATE_REQUEST]) else raw
    if context is None or info is None:
        raise ApduError(
            "AARQ lacks application-context-name or user-information", apdu=content.hex()
        )
    return Aarq(context, mechanism, auth, title, info)


def _encode_aare(aare: Aare) -> bytes:
    body = _tlv(0xA1, _tlv(0x06, aare.application_context))
    body += _tlv(0xA2, _tlv(0x02, bytes([aare.result])))
    source_tag = 0xA1 if aare.diagnostic_source == 1 else 0xA2
    body += _tlv(0xA3, _tlv(source_tag, _tlv(0x02, bytes([aare.diagnostic]))))
    if aare.responding_ap_title is not None:
        body += _tlv(0xA4, _tlv(0x04, aare.responding_ap_title))
    if aare.mechanism is not None:
        body += _tlv(0x88, b"\x07\x80") + _tlv(0x89, aare.mechanism)
        if aare.responding_authentication is not None:
            body += _tlv(0xAA, _tlv(0x80, aare.responding_authentication))
    info = aare.user_information
    if info is not None:
        if isinstance(info, InitiateResponse):
            raw = encode_initiate_response(info)
        elif isinstance(info, ConfirmedServiceError):
            raw = bytes([TAG_CONFIRMED_SERVICE_ERROR, info.service, info.error_group, info.value])
        else:
            raw = info
        body += _tlv(0xBE, _tlv(0x04, raw))
    return _tlv(TAG_AARE, body)


def _decode_aare(content: bytes) -> Aare:
    context = result = None
    source, diagnostic = 1, 0
    title = mechanism = auth = None
    info: InitiateResponse | ConfirmedServiceError | bytes | None = None
    for tag, value in _parse_tlvs(content, "AARE"):
        if tag == 0xA1:
            context = _oid_inside(value, "application-context-name")
        elif tag == 0xA2:
            result = _ber_integer(value, "result")
        elif tag == 0xA3:
            elements = _parse_tlvs(value, "result-source-diagnostic")
            if len(elements) != 1 or elements[0][0] not in (0xA1, 0xA2):
                raise ApduError("malformed result-source-diagnostic", content=value.hex())
            source = 1 if elements[0][0] == 0xA1 else 2
            diagnostic = _ber_integer(elements[0][1], "diagnostic")
        elif tag == 0xA4:
            title = _octets_inside(value, 0x04, "responding-AP-title")
        elif tag == 0x89:
            mechanism = value
        elif tag == 0xAA:
            elements = _parse_tlvs(value, "responding-authentication-value")
            if len(elements) != 1:
                raise ApduError("malformed responding-authentication-value", content=value.hex())
            auth = elements[0][1]
        elif tag == 0xBE:
            raw = _octets_inside(value, 0x04, "user-information")
            if raw[:1] == bytes([TAG_INITIATE_RESPONSE]):
                info = decode_initiate_response(raw)
            elif raw[:1] == bytes([TAG_CONFIRMED_SERVICE_ERROR]):
                info = _decode_confirmed_service_error(raw)
            else:
                info = raw
    if context is None or result is None:
        raise ApduError("AARE lacks application-context-name or result", apdu=content.hex())
    return Aare(context, result, source, diagnostic, title, mechanism, auth, info)


def _encode_release(tag: int, reason: int | None) -> bytes:
    return _tlv(tag, b"" if reason is None else _tlv(0x80, bytes([reason])))


def _decode_release_reason(content: bytes, what: str) -> int | None:
    reason = None
    for tag, value in _parse_tlvs(content, what):
        if tag == 0x80 and len(value) == 1:
            reason = value[0]
    return reason


# ---------------------------------------------------------------------------------------------
# GET


def _encode_descriptor(desc: AttributeDescriptor) -> bytes:
    return (
        struct.pack(">H", desc.class_id)
        + desc.instance.encode()
        + struct.pack(">b", desc.attribute)
    )


def _encode_access(access: AccessSelection | None) -> bytes:
    if access is None:
        return b"\x00"
    return bytes([1, access.selector]) + encode_data(access.parameters)


def _decode_descriptor(data: bytes, pos: int) -> tuple[AttributeDescriptor, int]:
    if pos + 9 > len(data):
        raise ApduError("truncated attribute descriptor", offset=pos, apdu=data.hex())
    class_id = int.from_bytes(data[pos : pos + 2], "big")
    try:
        obis = Obis.decode(data[pos + 2 : pos + 8])
    except CosemValueError as exc:
        raise ApduError("bad logical name", offset=pos) from exc
    attribute = struct.unpack_from(">b", data, pos + 8)[0]
    return AttributeDescriptor(class_id, obis, attribute), pos + 9


def _decode_access(data: bytes, pos: int) -> tuple[AccessSelection | None, int]:
    if pos >= len(data):
        raise ApduError("missing access-selection flag", offset=pos)
    if data[pos] == 0:
        return None, pos + 1
    if data[pos] != 1 or pos + 2 > len(data):
        raise ApduError("malformed access-selection", offset=pos, apdu=data.hex())
    selector = data[pos + 1]
    params, end = decode_data(data, pos + 2)
    return AccessSelection(selector, params), end


def encode_get_result(result: GetResult) -> bytes:
    if isinstance(result, Data):
        return b"\x00" + encode_data(result)
    return bytes([1, int(result)])


def _decode_get_result(data: bytes, pos: int) -> tuple[GetResult, int]:
    if pos + 2 > len(data):
        raise ApduError("truncated Get-Data-Result", offset=pos)
    if data[pos] == 0:
        return decode_data(data, pos + 1)
    if data[pos] == 1:
        return data_access_result(data[pos + 1]), pos + 2
    raise ApduError("Get-Data-Result choice must be 0 or 1", choice=data[pos], offset=pos)


def encode_get_results(results: tuple[GetResult, ...] | list[GetResult]) -> bytes:
    """SEQUENCE OF Get-Data-Result: the body of GET-Response-With-List (and of its blocks)."""
    return encode_length(len(results)) + b"".join(encode_get_result(r) for r in results)


def decode_get_results(data: bytes, pos: int = 0) -> tuple[tuple[GetResult, ...], int]:
    count, pos = decode_length(data, pos)
    if count > len(data) - pos:
        raise ApduError("result count exceeds the bytes left", count=count)
    results = []
    for _ in range(count):
        result, pos = _decode_get_result(data, pos)
        results.append(result)
    return tuple(results), pos


def _encode_get_request(req: GetRequestNormal | GetRequestNext | GetRequestWithList) -> bytes:
    if isinstance(req, GetRequestNormal):
        return (
            bytes([TAG_GET_REQUEST, 1, req.invoke_id_and_priority])
            + _encode_descriptor(req.descriptor)
            + _encode_access(req.access)
        )
    if isinstance(req, GetRequestNext):
        return bytes([TAG_GET_REQUEST, 2, req.invoke_id_and_priority]) + struct.pack(
            ">I", req.block_number
        )
    body = bytearray([TAG_GET_REQUEST, 3, req.invoke_id_and_priority])
    body += encode_length(len(req.items))
    for desc, access in req.items:
        body += _encode_descriptor(desc) + _encode_access(access)
    return bytes(body)


def _decode_get_request(data: bytes) -> GetRequestNormal | GetRequestNext | GetRequestWithList:
    if len(data) < 3:
        raise ApduError("truncated GET request", apdu=data.hex())
    choice, invoke = data[1], data[2]
    if choice == 1:
        desc, pos = _decode_descriptor(data, 3)
        access, pos = _decode_access(data, pos)
        result: GetRequestNormal | GetRequestNext | GetRequestWithList = GetRequestNormal(
            invoke, desc, access
        )
    elif choice == 2:
        if len(data) < 7:
            raise ApduError("truncated GET-Request-Next", apdu=data.hex())
        result, pos = GetRequestNext(invoke, int.from_bytes(data[3:7], "big")), 7
    elif choice == 3:
        count, pos = decode_length(data, 3)
        if count * 10 > len(data) - pos:
            raise ApduError("attribute count exceeds the bytes left", count=count)
        items = []
        for _ in range(count):
            desc, pos = _decode_descriptor(data, pos)
            access, pos = _decode_access(data, pos)
            items.append((desc, access))
        result = GetRequestWithList(invoke, tuple(items))
    else:
        raise ApduError("unknown GET request choice", choice=choice, apdu=data.hex())
    if pos != len(data):
        raise ApduError("trailing bytes after GET request", apdu=data.hex())
    return result


def _encode_get_response(
    resp: GetResponseNormal | GetResponseWithDataBlock | GetResponseWithList,
) -> bytes:
    if isinstance(resp, GetResponseNormal):
        return bytes([TAG_GET_RESPONSE, 1, resp.invoke_id_and_priority]) + encode_get_result(
            resp.result
        )
    if isinstance(resp, GetResponseWithDataBlock):
        head = bytes(
            [TAG_GET_RESPONSE, 2, resp.invoke_id_and_priority, 0xFF if resp.last_block else 0]
        )
        head += struct.pack(">I", resp.block_number)
        if isinstance(resp.raw, bytes):
            return head + b"\x00" + encode_length(len(resp.raw)) + resp.raw
        return head + bytes([1, int(resp.raw)])
    return bytes([TAG_GET_RESPONSE, 3, resp.invoke_id_and_priority]) + encode_get_results(
        resp.results
    )


def _decode_get_response(
    data: bytes,
) -> GetResponseNormal | GetResponseWithDataBlock | GetResponseWithList:
    if len(data) < 4:
        raise ApduError("truncated GET response", apdu=data.hex())
    choice, invoke = data[1], data[2]
    result: GetResponseNormal | GetResponseWithDataBlock | GetResponseWithList
    if choice == 1:
        value, pos = _decode_get_result(data, 3)
        result = GetResponseNormal(invoke, value)
    elif choice == 2:
        if len(data) < 10:
            raise ApduError("truncated GET-Response-With-Datablock", apdu=data.hex())
        last = data[3] != 0
        block = int.from_bytes(data[4:8], "big")
        if data[8] == 0:
            length, start = decode_length(data, 9)
            pos = start + length
            if pos > len(data):
                raise ApduError("raw-data runs past the end", length=length, apdu=data[:64].hex())
            raw: bytes | DataAccessResult | int = bytes(data[start:pos])
        elif data[8] == 1:
            raw, pos = data_access_result(data[9]), 10
        else:
            raise ApduError("DataBlock-G result choice must be 0 or 1", choice=data[8])
        result = GetResponseWithDataBlock(invoke, last, block, raw)
    elif choice == 3:
        results, pos = decode_get_results(data, 3)
        result = GetResponseWithList(invoke, results)
    else:
        raise ApduError("unknown GET response choice", choice=choice, apdu=data.hex())
    if pos != len(data):
        raise ApduError("trailing bytes after GET response", apdu=data[:64].hex())
    return result


# ---------------------------------------------------------------------------------------------
# Entry points


def encode_apdu(apdu: Apdu) -> bytes:
    """Encode any APDU of this module."""
    if isinstance(apdu, Aarq):
        return _encode_aarq(apdu)
    if isinstance(apdu, Aare):
        return _encode_aare(apdu)
    if isinstance(apdu, Rlrq):
        return _encode_release(TAG_RLRQ, apdu.reason)
    if isinstance(apdu, Rlre):
        return _encode_release(TAG_RLRE, apdu.reason)
    if isinstance(apdu, (GetRequestNormal, GetRequestNext, GetRequestWithList)):
        return _encode_get_request(apdu)
    if isinstance(apdu, (GetResponseNormal, GetResponseWithDataBlock, GetResponseWithList)):
        return _encode_get_response(apdu)
    if isinstance(apdu, ExceptionResponse):
        return bytes([TAG_EXCEPTION_RESPONSE, apdu.state_error, apdu.service_error])
    if isinstance(apdu, ConfirmedServiceError):
        return bytes([TAG_CONFIRMED_SERVICE_ERROR, apdu.service, apdu.error_group, apdu.value])
    raise ApduError("cannot encode", apdu=type(apdu).__name__)


def decode_apdu(data: bytes) -> Apdu:
    """Decode one APDU; raises ``ApduError`` (or ``AxdrError`` for a bad embedded value)."""
    data = bytes(data)
    if not data:
        raise ApduError("empty APDU")
    tag = data[0]
    try:
        if tag in (TAG_AARQ, TAG_AARE, TAG_RLRQ, TAG_RLRE):
            elements = _parse_tlvs(data, "ACSE")
            if len(elements) != 1:
                raise ApduError("trailing bytes after ACSE APDU", apdu=data.hex())
            content = elements[0][1]
            if tag == TAG_AARQ:
                return _decode_aarq(content)
            if tag == TAG_AARE:
                return _decode_aare(content)
            reason = _decode_release_reason(content, "release")
            return Rlrq(reason) if tag == TAG_RLRQ else Rlre(reason)
        if tag == TAG_GET_REQUEST:
            return _decode_get_request(data)
        if tag == TAG_GET_RESPONSE:
            return _decode_get_response(data)
        if tag == TAG_EXCEPTION_RESPONSE:
            if len(data) != 3:
                raise ApduError("malformed exception-response", apdu=data.hex())
            return ExceptionResponse(data[1], data[2])
        if tag == TAG_CONFIRMED_SERVICE_ERROR:
            return _decode_confirmed_service_error(data)
    except (IndexError, struct.error) as exc:
        raise ApduError("truncated APDU", apdu=data[:64].hex()) from exc
    raise ApduError("unsupported APDU tag", tag=hex(tag), apdu=data[:64].hex())
