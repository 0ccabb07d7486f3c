"""The sans-IO client against the sans-IO server, in memory: flows, segmentation, blocks, faults."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.apdu import (
    Aare,
    AccessSelection,
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    GetResponseWithDataBlock,
    Rlre,
    encode_apdu,
)
from meterchain.bridge.dlms.axdr import Data, Tag
from meterchain.bridge.dlms.client import (
    AssociationAccepted,
    ClientConnection,
    ClientSettings,
    ClientState,
    Event,
    GetCompleted,
    LinkClosed,
    LinkEstablished,
    ReleaseCompleted,
)
from meterchain.bridge.dlms.cosem import (
    CaptureObject,
    ClassId,
    datetime_from_utc,
    entry_descriptor,
    range_descriptor,
)
from meterchain.bridge.dlms.emulator import (
    EmulatedDlmsMeter,
    EmulatorFaults,
    default_settings,
    shape_answer,
)
from meterchain.bridge.dlms.errors import (
    AddressError,
    ApduError,
    AssociationError,
    CrcError,
    DlmsError,
    DlmsTimeoutError,
    LinkError,
    RetriesExhausted,
    ServiceError,
)
from meterchain.bridge.dlms.hdlc import (
    LLC_RESPONSE,
    Control,
    FrameType,
    HdlcAddress,
    HdlcFrame,
    LinkParameters,
    decode_frame,
    encode_frame,
)
from meterchain.bridge.dlms.obis import CLOCK_OBIS, LOAD_PROFILE_OBIS, Obis
from meterchain.bridge.dlms.security import LowLevelSecurity
from meterchain.bridge.dlms.server import ServerConnection, ServerSettings

START = 1_767_225_600
NOW = START + 2 * 86400 + 1234
IMPORT = Obis.parse("1-0:1.8.0.255")


class Wire:
    """Client and server joined by a loop that can lose, corrupt or re-address answers."""

    def __init__(
        self,
        client: ClientSettings | None = None,
        server: ServerSettings | None = None,
        meter: EmulatedDlmsMeter | None = None,
    ) -> None:
        self.meter = meter or EmulatedDlmsMeter(start=START)
        self.client = ClientConnection(client)
        self.server = ServerConnection(server or default_settings(), self.meter)
        self.faults: EmulatorFaults = self.meter.faults
        self.sent: list[bytes] = []

    def run(self, action: Callable[[], None], steps: int = 10_000) -> Event:
        action()
        for _ in range(steps):
            out = self.client.data_to_send()
            assert out, "client went quiet without finishing"
            self.sent.append(out)
            self.server.receive_data(out, NOW)
            shaped = [shape_answer(f, self.faults) for f in self.server.frames_to_send()]
            answer = b"".join(f for f in shaped if f)
            if not answer:
                self.client.timeout()
                continue
            events = self.client.receive_data(answer)
            if events:
                (event,) = events
                return event
        raise AssertionError("no progress")

    def associate(self) -> AssociationAccepted:
        assert isinstance(self.run(self.client.connect), LinkEstablished)
        event = self.run(self.client.associate)
        assert isinstance(event, AssociationAccepted)
        return event

    def get(
        self, class_id: int, obis: Obis, attribute: int, access: AccessSelection | None = None
    ) -> Data | int:
        event = self.run(
            lambda: self.client.get(AttributeDescriptor(class_id, obis, attribute), access)
        )
        assert isinstance(event, GetCompleted) and len(event.results) == 1
        return event.results[0]


def _profile_range(hours: int) -> AccessSelection:
    clock = CaptureObject(ClassId.CLOCK, CLOCK_OBIS, 2)
    start = datetime_from_utc(NOW - hours * 3600, -60)
    return AccessSelection(1, range_descriptor(clock, start, datetime_from_utc(NOW, -60)))


def test_full_session() -> None:
    wire = Wire()
    accepted = wire.associate()
    assert accepted.max_pdu_size == 1024 and wire.client.state is ClientState.ASSOCIATED
    # The first I-frame after SNRM/UA carries N(S)=0, N(R)=0 with the poll bit: control 0x10.
    aarq_frame = decode_frame(wire.sent[1])
    assert aarq_frame.control == Control(FrameType.I, True, 0, 0)
    assert aarq_frame.info[:3] == b"\xe6\xe6\x00"
    assert wire.get(ClassId.REGISTER, IMPORT, 2) == Data(Tag.UINT32, wire.meter.import_wh(NOW))
    assert wire.get(ClassId.REGISTER, Obis.parse("1-0:32.7.0.255"), 3) == Data.structure(
        [Data(Tag.INT8, -1), Data(Tag.ENUM, 35)]
    )
    assert isinstance(wire.run(wire.client.release), ReleaseCompleted)
    assert isinstance(wire.run(wire.client.disconnect), LinkClosed)
    assert wire.client.state is ClientState.DISCONNECTED
    assert wire.server.errors == []


def test_get_with_list_and_data_access_errors() -> None:
    wire = Wire()
    wire.associate()
    wire.faults.unavailable.add(Obis.parse("1-0:2.8.0.255"))
    items = [
        (AttributeDescriptor(ClassId.REGISTER, IMPORT, 2), None),
        (AttributeDescriptor(ClassId.REGISTER, Obis.parse("1-0:2.8.0.255"), 2), None),
        (AttributeDescriptor(ClassId.REGISTER, Obis.parse("1-0:99.99.0.255"), 2), None),
        (AttributeDescriptor(ClassId.DATA, IMPORT, 2), None),
    ]
    event = wire.run(lambda: wire.client.get_with_list(items))
    assert isinstance(event, GetCompleted)
    assert event.results[1:] == (
        DataAccessResult.OBJECT_UNAVAILABLE,
        DataAccessResult.OBJECT_UNDEFINED,
        DataAccessResult.OBJECT_CLASS_INCONSISTENT,
    )


def _profile_reads(wire: Wire) -> list[Data | int]:
    wire.associate()
    return [
        wire.get(ClassId.PROFILE_GENERIC, LOAD_PROFILE_OBIS, 2, _profile_range(30)),
        wire.get(
            ClassId.PROFILE_GENERIC,
            LOAD_PROFILE_OBIS,
            2,
            AccessSelection(2, entry_descriptor(3, 40)),
        ),
    ]


def test_segmentation_and_block_transfer_give_the_same_answers() -> None:
    plain = _profile_reads(Wire(ClientSettings(max_info_length=2030, max_pdu_size=0xFFFF)))
    tiny_frames = Wire(ClientSettings(max_info_length=32, max_pdu_size=0xFFFF))
    assert _profile_reads(tiny_frames) == plain
    assert tiny_frames.client.link == LinkParameters(32, 32, 1, 1)
    tiny_blocks = Wire(ClientSettings(max_pdu_size=64))
    assert _profile_reads(tiny_blocks) == plain
    both = Wire(ClientSettings(max_info_length=40, max_pdu_size=100))
    assert _profile_reads(both) == plain
    rows = plain[0]
    assert isinstance(rows, Data) and len(rows.items) == 30 * 4  # NOW is off the 15-minute grid


def test_long_request_is_segmented_by_the_client() -> None:
    wire = Wire(ClientSettings(max_info_length=32))
    wire.associate()
    items = [(AttributeDescriptor(ClassId.REGISTER, IMPORT, 2), None)] * 12
    event = wire.run(lambda: wire.client.get_with_list(items))
    assert isinstance(event, GetCompleted) and len(event.results) == 12
    assert any(decode_frame(f).segmented for f in wire.sent)


def test_low_level_security() -> None:
    good = Wire(ClientSettings(client_address=1, authentication=LowLevelSecurity(b"12345678")))
    good.associate()
    bad = Wire(ClientSettings(client_address=1, authentication=LowLevelSecurity(b"wrong")))
    bad.run(bad.client.connect)
    with pytest.raises(AssociationError) as info:
        bad.run(bad.client.associate)
    assert info.value.context["diagnostic"] == 13  # authentication-failure
    assert bad.client.state is ClientState.LINK_UP
    missing = Wire(ClientSettings(client_address=1))
    missing.run(missing.client.connect)
    with pytest.raises(AssociationError) as info:
        missing.run(missing.client.associate)
    assert info.value.context["diagnostic"] == 12  # mechanism name required
    stranger = Wire(ClientSettings(client_address=5))
    stranger.run(stranger.client.connect)
    with pytest.raises(AssociationError):
        stranger.run(stranger.client.associate)


def test_retries_recover_from_single_faults() -> None:
    wire = Wire()
    wire.associate()
    wire.faults.corrupt_next = 1
    assert wire.get(ClassId.REGISTER, IMPORT, 2) == Data(Tag.UINT32, wire.meter.import_wh(NOW))
    wire.faults.drop_next = 2
    assert wire.get(ClassId.REGISTER, IMPORT, 2) == Data(Tag.UINT32, wire.meter.import_wh(NOW))
    kinds = {type(f) for f in wire.client.faults}
    assert CrcError in kinds and DlmsTimeoutError in kinds


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("corrupt_crc", CrcError), ("wrong_address", AddressError), ("silent", DlmsTimeoutError)],
)
def test_persistent_faults_exhaust_the_retry_budget(fault: str, expected: type) -> None:
    wire = Wire(ClientSettings(max_retries=2))
    wire.associate()
    setattr(wire.faults, fault, True)
    with pytest.raises(RetriesExhausted) as info:
        wire.get(ClassId.REGISTER, IMPORT, 2)
    assert isinstance(info.value.last_fault, expected)
    assert info.value.context["retries"] == 2
    assert wire.client.state is ClientState.DISCONNECTED
    assert sum(1 for f in wire.sent if f) == 3 + 2  # SNRM, AARQ, GET and two re-sends


def _answer(apdu: bytes, control: Control) -> bytes:
    return encode_frame(HdlcFrame(HdlcAddress(16), HdlcAddress(1), control, LLC_RESPONSE + apdu))


def _associated_client() -> ClientConnection:
    wire = Wire()
    wire.associate()
    return wire.client


@pytest.mark.parametrize(
    ("apdu", "error"),
    [
        (encode_apdu(Aare()), ApduError),
        (encode_apdu(Rlre(0)), ApduError),
        (encode_apdu(ExceptionResponse(1, 2)), ServiceError),
        (bytes.fromhex("c401c500060001e240"), ApduError),  # another invoke-id
        (
            encode_apdu(GetResponseWithDataBlock(0xC1, False, 2, b"\x06")),
            ApduError,
        ),  # block 2 first
        (bytes.fromhex("c401c1000601"), DlmsError),  # truncated value
        (bytes.fromhex("0e010601"), ServiceError),
    ],
)
def test_unexpected_or_malformed_answers_are_typed(apdu: bytes, error: type) -> None:
    client = _associated_client()
    client.get(AttributeDescriptor(ClassId.REGISTER, IMPORT, 2))
    client.data_to_send()
    with pytest.raises(error):
        client.receive_data(_answer(apdu, Control(FrameType.I, True, 1, 2)))
    assert not client.busy  # the next request can go out


def test_dm_and_frmr_are_link_errors() -> None:
    for kind in (FrameType.DM, FrameType.FRMR):
        client = ClientConnection()
        client.connect()
        client.data_to_send()
        with pytest.raises(LinkError):
            client.receive_data(
                encode_frame(HdlcFrame(HdlcAddress(16), HdlcAddress(1), Control(kind)))
            )
        assert client.state is ClientState.DISCONNECTED and not client.busy


def test_requests_in_the_wrong_state_are_refused() -> None:
    client = ClientConnection()
    with pytest.raises(LinkError):
        client.associate()
    with pytest.raises(LinkError):
        client.get(AttributeDescriptor(ClassId.REGISTER, IMPORT, 2))
    client.connect()
    with pytest.raises(LinkError):
        client.connect()  # one request in flight at a time


def test_server_answers_dm_before_snrm_and_ignores_other_servers() -> None:
    wire = Wire()
    frame = HdlcFrame(HdlcAddress(1), HdlcAddress(16), Control(FrameType.I), b"\xe6\xe6\x00\xc0")
    wire.server.receive_data(encode_frame(frame), NOW)
    assert decode_frame(wire.server.frames_to_send()[0]).kind is FrameType.DM
    other = HdlcFrame(HdlcAddress(2), HdlcAddress(16), Control(FrameType.SNRM))
    wire.server.receive_data(encode_frame(other), NOW)
    assert wire.server.frames_to_send() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=40))
def test_garbage_answers_end_in_a_typed_error_never_a_loop(answers: list[bytes]) -> None:
    client = ClientConnection(ClientSettings(max_retries=3))
    client.connect()
    replies = iter(answers)
    for _ in range(200):
        client.data_to_send()
        chunk = next(replies, b"")
        try:
            if chunk:
                if client.receive_data(chunk):
                    return
            else:
                client.timeout()
        except DlmsError:
            return
    pytest.fail("client neither finished nor failed")
