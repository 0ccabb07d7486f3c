"""Interoperability with gurux-dlms (GPL: a test-only peer, never imported by product code).

Three directions: frames our client encodes are read by gurux's translator; gurux's client talks
to our server (so gurux decodes what our codec encodes, including blocks and selective access);
values and frames gurux encodes decode with our codec.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

gurux = pytest.importorskip("gurux_dlms")

from gurux_dlms import (  # noqa: E402
    GXArray,
    GXByteBuffer,
    GXDateTime,
    GXDLMSClient,
    GXDLMSSettings,
    GXDLMSTranslator,
    GXReplyData,
    GXStructure,
)
from gurux_dlms.enums import Authentication, DataType, InterfaceType  # noqa: E402
from gurux_dlms.internal._GXCommon import _GXCommon  # noqa: E402
from gurux_dlms.internal._GXDataInfo import _GXDataInfo  # noqa: E402
from gurux_dlms.objects import GXDLMSClock, GXDLMSData, GXDLMSProfileGeneric, GXDLMSRegister  # noqa: E402
from meterchain.bridge.dlms.apdu import (  # noqa: E402
    Aarq,
    AccessSelection,
    AttributeDescriptor,
    GetRequestNormal,
    GetRequestWithList,
    Rlrq,
    decode_apdu,
)
from meterchain.bridge.dlms.axdr import Data, DateTime, Tag, decode_data_exact, encode_data  # noqa: E402
from meterchain.bridge.dlms.client import ClientConnection, ClientSettings  # noqa: E402
from meterchain.bridge.dlms.cosem import (  # noqa: E402
    CaptureObject,
    ClassId,
    datetime_from_utc,
    datetime_to_utc,
    range_descriptor,
)
from meterchain.bridge.dlms.emulator import EmulatedDlmsMeter, default_settings  # noqa: E402
from meterchain.bridge.dlms.hdlc import FrameType, LinkParameters, decode_frame, strip_llc  # noqa: E402
from meterchain.bridge.dlms.obis import ACTIVE_IMPORT_OBIS, CLOCK_OBIS, LOAD_PROFILE_OBIS  # noqa: E402
from meterchain.bridge.dlms.security import LowLevelSecurity  # noqa: E402
from meterchain.bridge.dlms.server import ServerConnection  # noqa: E402

START = 1_767_225_600
NOW = START + 2 * 86400 + 1234
IMPORT = ACTIVE_IMPORT_OBIS


# --- our client's frames, read by gurux's translator ---------------------------------------------


def _our_client_frames() -> list[bytes]:
    """Every frame our client sends in a session with segmentation-free, block-transferred reads."""
    meter = EmulatedDlmsMeter(start=START)
    server = ServerConnection(default_settings(), meter)
    client = ClientConnection(
        ClientSettings(
            client_address=1, authentication=LowLevelSecurity(b"12345678"), max_pdu_size=256
        )
    )
    sent: list[bytes] = []

    def run(action: Callable[[], None]) -> None:
        action()
        for _ in range(200):
            out = client.data_to_send()
            sent.append(out)
            server.receive_data(out, NOW)
            if client.receive_data(b"".join(server.frames_to_send())):
                return
        raise AssertionError("no progress")

    clock = CaptureObject(ClassId.CLOCK, CLOCK_OBIS, 2)
    selector = range_descriptor(
        clock, datetime_from_utc(NOW - 30 * 3600, -60), datetime_from_utc(NOW, -60)
    )
    run(client.connect)
    run(client.associate)
    run(lambda: client.get(AttributeDescriptor(ClassId.REGISTER, IMPORT, 2)))
    run(
        lambda: client.get_with_list(
            [
                (AttributeDescriptor(ClassId.REGISTER, IMPORT, 2), None),
                (AttributeDescriptor(ClassId.REGISTER, IMPORT, 3), None),
            ]
        )
    )
    run(
        lambda: client.get(
            AttributeDescriptor(ClassId.PROFILE_GENERIC, LOAD_PROFILE_OBIS, 2),
            AccessSelection(1, selector),
        )
    )
    run(client.release)
    run(client.disconnect)
    return sent


def test_gurux_translator_reads_our_client_frames() -> None:
    # A fresh translator per frame: one instance would treat frames as parts of one conversation.
    xml = [GXDLMSTranslator().messageToXml(GXByteBuffer(frame)) for frame in _our_client_frames()]
    text = "\n".join(xml)
    assert "<Snrm>" in xml[0] and '<MaxInfoTX Value="128" />' in xml[0]
    assert "<AssociationRequest>" in xml[1]
    assert '<CallingAuthentication Value="3132333435363738" />' in xml[1]
    assert '<MechanismName Value="Low" />' in xml[1]
    assert "<GetRequestNormal>" in xml[2] and '<InstanceId Value="0100010800FF" />' in xml[2]
    assert "<GetRequestWithList>" in text
    assert '<AccessSelector Value="01" />' in text
    assert "<GetRequestForNextDataBlock>" in text
    assert "<ReleaseRequest>" in text
    assert "<DisconnectRequest>" in xml[-1]
    assert "rror" not in text  # no parse error anywhere


# --- gurux's client against our server ------------------------------------------------------------


class GuruxSession:
    def __init__(self, client: GXDLMSClient) -> None:
        self.client = client
        self.server = ServerConnection(default_settings(), EmulatedDlmsMeter(start=START))

    def send(self, request: Any) -> GXReplyData:
        reply = GXReplyData()
        frames = request if isinstance(request, list) else [request]
        for frame in frames:
            data = bytes(frame)
            while True:
                self.server.receive_data(data, NOW)
                answer = b"".join(self.server.frames_to_send())
                assert answer, "our server stayed silent"
                self.client.getData(GXByteBuffer(answer), reply, GXReplyData())
                if not reply.isMoreData():
                    break
                data = bytes(self.client.receiverReady(reply))
        return reply

    def read(self, obj: Any, attribute: int) -> Any:
        reply = self.send(self.client.read(obj, attribute))
        return self.client.updateValue(obj, attribute, reply.value)


@pytest.fixture
def gurux_session() -> GuruxSession:
    client = GXDLMSClient(True, 1, 1, Authentication.LOW, "12345678", InterfaceType.HDLC)
    session = GuruxSession(client)
    client.parseUAResponse(session.send(client.snrmRequest()).data)
    client.parseAareResponse(session.send(client.aarqRequest()).data)
    return session


def test_gurux_client_reads_our_server(gurux_session: GuruxSession) -> None:
    meter = gurux_session.server.model
    assert isinstance(meter, EmulatedDlmsMeter)
    register = GXDLMSRegister("1.0.1.8.0.255")
    gurux_session.read(register, 3)
    gurux_session.read(register, 2)
    assert register.value == meter.import_wh(NOW) and register.unit == 30
    voltage = GXDLMSRegister("1.0.32.7.0.255")
    gurux_session.read(voltage, 3)
    gurux_session.read(voltage, 2)
    assert voltage.value == pytest.approx(230.1)  # gurux applies the scaler in floats; we do not
    clock = GXDLMSClock("0.0.1.0.0.255")
    gurux_session.read(clock, 2)
    assert clock.time.value.astimezone(dt.UTC).timestamp() == NOW
    serial = GXDLMSData("0.0.96.1.0.255")
    gurux_session.read(serial, 2)
    assert bytes(serial.value) == b"MC20260001"


def test_gurux_client_reads_profile_by_entry_and_range(gurux_session: GuruxSession) -> None:
    meter = gurux_session.server.model
    assert isinstance(meter, EmulatedDlmsMeter)
    profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
    gurux_session.read(profile, 3)
    gurux_session.read(profile, 4)
    assert profile.capturePeriod == 900 and len(profile.captureObjects) == 3
    reply = gurux_session.send(gurux_session.client.readRowsByEntry(profile, 1, 40))
    gurux_session.client.updateValue(profile, 2, reply.value)
    assert [row[1] for row in profile.buffer] == [meter.profile_row(i)[1] for i in range(40)]
    # Compressed (null) timestamps are rebuilt by gurux too.
    stamps = [row[0].value.astimezone(dt.UTC).timestamp() for row in profile.buffer]
    assert stamps == [START + i * 900 for i in range(40)]
    start = dt.datetime.fromtimestamp(START + 86400, dt.UTC)
    end = dt.datetime.fromtimestamp(START + 86400 + 7200, dt.UTC)
    reply = gurux_session.send(gurux_session.client.readRowsByRange(profile, start, end))
    gurux_session.client.updateValue(profile, 2, reply.value)
    assert [row[1] for row in profile.buffer] == [meter.profile_row(96 + i)[1] for i in range(9)]


# --- gurux's encodings, decoded by our codec ----------------------------------------------------


def test_our_codec_decodes_gurux_client_frames() -> None:
    client = GXDLMSClient(True, 1, 1, Authentication.LOW, "12345678", InterfaceType.HDLC)
    snrm = decode_frame(bytes(client.snrmRequest()))
    assert snrm.kind is FrameType.SNRM and snrm.source.upper == 1 and snrm.destination.upper == 1
    LinkParameters.decode(snrm.info)
    aarq = decode_apdu(
        strip_llc(decode_frame(bytes(client.aarqRequest()[0])).info, b"\xe6\xe6\x00")
    )
    assert isinstance(aarq, Aarq) and aarq.calling_authentication == b"12345678"
    register = GXDLMSRegister("1.0.1.8.0.255")
    read = decode_apdu(
        strip_llc(decode_frame(bytes(client.read(register, 2)[0])).info, b"\xe6\xe6\x00")
    )
    assert isinstance(read, GetRequestNormal)
    assert read.descriptor == AttributeDescriptor(3, IMPORT, 2)
    profile = GXDLMSProfileGeneric("1.0.99.1.0.255")
    profile.captureObjects = []
    start = dt.datetime(2026, 1, 2, 0, 0, tzinfo=dt.UTC)
    by_range = client.readRowsByRange(profile, start, start + dt.timedelta(hours=2))
    ranged = decode_apdu(strip_llc(decode_frame(bytes(by_range[0])).info, b"\xe6\xe6\x00"))
    assert isinstance(ranged, GetRequestNormal) and ranged.access is not None
    assert ranged.access.selector == 1
    _, from_value, to_value, _ = ranged.access.parameters.items
    assert to_value.tag is Tag.OCTET_STRING
    assert datetime_to_utc(DateTime.decode(from_value.as_bytes()), 0) == int(start.timestamp())


def test_our_server_decodes_gurux_get_with_list(gurux_session: GuruxSession) -> None:
    register, clock = GXDLMSRegister("1.0.1.8.0.255"), GXDLMSClock("0.0.1.0.0.255")
    (request,) = gurux_session.client.readList([(register, 2), (clock, 2)])
    listed = decode_apdu(strip_llc(decode_frame(bytes(request[0])).info, b"\xe6\xe6\x00"))
    assert isinstance(listed, GetRequestWithList)
    assert [d.instance for d, _ in listed.items] == [IMPORT, CLOCK_OBIS]
    reply = gurux_session.send(request)
    meter = gurux_session.server.model
    assert isinstance(meter, EmulatedDlmsMeter)
    assert reply.value[0] == meter.import_wh(NOW)
    # Release and disconnect as gurux encodes them, decoded by our codec, answered by our server.
    (release,) = gurux_session.client.releaseRequest()
    assert decode_apdu(strip_llc(decode_frame(bytes(release)).info, b"\xe6\xe6\x00")) == Rlrq(0)
    gurux_session.send(release)
    disconnect = bytes(gurux_session.client.disconnectRequest())
    assert decode_frame(disconnect).kind is FrameType.DISC
    gurux_session.send(disconnect)
    assert not gurux_session.server.connected and gurux_session.server.errors == []


def _structure(*items: Any) -> GXStructure:
    value = GXStructure()
    value.extend(items)
    return value


def _array(*items: Any) -> GXArray:
    value = GXArray()
    value.extend(items)
    return value


@pytest.mark.parametrize(
    ("data_type", "value", "expected"),
    [
        (DataType.UINT32, 123456, Data(Tag.UINT32, 123456)),
        (DataType.INT8, -5, Data(Tag.INT8, -5)),
        (DataType.INT16, -300, Data(Tag.INT16, -300)),
        (DataType.UINT16, 2301, Data(Tag.UINT16, 2301)),
        (DataType.INT64, -(2**40), Data(Tag.INT64, -(2**40))),
        (DataType.UINT64, 2**63, Data(Tag.UINT64, 2**63)),
        (DataType.ENUM, 30, Data(Tag.ENUM, 30)),
        (DataType.BOOLEAN, True, Data(Tag.BOOLEAN, True)),
        (DataType.OCTET_STRING, bytearray(b"\x01\x02"), Data.octets(b"\x01\x02")),
        (DataType.STRING, "hello", Data(Tag.VISIBLE_STRING, "hello")),
        (
            DataType.STRUCTURE,
            _structure(1, 2),
            Data.structure([Data(Tag.INT32, 1), Data(Tag.INT32, 2)]),
        ),
        (
            DataType.ARRAY,
            _array(_structure(5, bytearray(b"ab"))),
            Data.array([Data.structure([Data(Tag.INT32, 5), Data.octets(b"ab")])]),
        ),
    ],
)
def test_our_codec_decodes_gurux_values(data_type: int, value: Any, expected: Data) -> None:
    buffer = GXByteBuffer()
    _GXCommon.setData(GXDLMSSettings(True, None), buffer, data_type, value)
    assert decode_data_exact(bytes(buffer.array())) == expected


def test_date_time_convention_matches_gurux() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    buffer = GXByteBuffer()
    moment = dt.datetime(2026, 1, 1, 12, 30, tzinfo=cet)
    _GXCommon.setData(GXDLMSSettings(True, None), buffer, DataType.OCTET_STRING, GXDateTime(moment))
    theirs = DateTime.decode(bytes(buffer.array())[2:])
    assert theirs.deviation == -60 and datetime_to_utc(theirs) == int(moment.timestamp())
    info = _GXDataInfo()
    info.type_ = DataType.DATETIME
    ours = datetime_from_utc(int(moment.timestamp()), -60, 0).encode()
    decoded = _GXCommon.getData(GXDLMSSettings(True, None), GXByteBuffer(ours), info)
    assert decoded.value.timestamp() == moment.timestamp()


def test_gurux_decodes_our_values() -> None:
    ours = Data.structure(
        [
            Data(Tag.INT8, -2),
            Data(Tag.ENUM, 30),
            Data.array([Data(Tag.UINT64, 5), Data.octets(b"xy")]),
            Data(Tag.VISIBLE_STRING, "AB"),
        ]
    )
    decoded = _GXCommon.getData(
        GXDLMSSettings(True, None), GXByteBuffer(encode_data(ours)), _GXDataInfo()
    )
    assert list(decoded) == [-2, 30, [5, bytearray(b"xy")], "AB"]
