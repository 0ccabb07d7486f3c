"""Fuzzing the state machines with well-formed frames around random payloads (valid checksums),
so the fuzzer reaches the APDU and COSEM layers: only typed errors, never a crash or a hang."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from meterchain.bridge.dlms.apdu import AccessSelection, AttributeDescriptor, encode_apdu
from meterchain.bridge.dlms.client import ClientConnection, ClientSettings
from meterchain.bridge.dlms.cosem import ClassId
from meterchain.bridge.dlms.emulator import EmulatedDlmsMeter, default_settings
from meterchain.bridge.dlms.errors import DlmsError
from meterchain.bridge.dlms.hdlc import (
    LLC_COMMAND,
    LLC_RESPONSE,
    Control,
    FrameType,
    HdlcAddress,
    HdlcFrame,
    encode_frame,
)
from meterchain.bridge.dlms.obis import LOAD_PROFILE_OBIS, Obis
from meterchain.bridge.dlms.server import ServerConnection

from tests.support.dlms_strategies import data_values, get_apdus

START = 1_767_225_600
NOW = START + 86400
CLIENT, SERVER = HdlcAddress(16), HdlcAddress(1)


def _associated_server() -> ServerConnection:
    server = ServerConnection(default_settings(), EmulatedDlmsMeter(start=START))
    client = ClientConnection()
    for action in (client.connect, client.associate):
        action()
        server.receive_data(client.data_to_send(), NOW)
        client.receive_data(b"".join(server.frames_to_send()))
    return server


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(get_apdus.map(encode_apdu), st.binary(max_size=200)),
    st.integers(0, 7),
    st.booleans(),
    st.booleans(),
)
def test_server_survives_any_i_frame(payload: bytes, seq: int, llc: bool, segmented: bool) -> None:
    server = _associated_server()
    info = (LLC_COMMAND if llc else b"") + payload
    control = Control(FrameType.I, True, seq, 1)
    server.receive_data(encode_frame(HdlcFrame(SERVER, CLIENT, control, info, segmented)), NOW)
    for frame in server.frames_to_send():
        assert frame[0] == 0x7E and frame[-1] == 0x7E


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 255), data_values, st.integers(-128, 127))
def test_server_answers_any_selective_access(
    selector: int, parameters: object, attribute: int
) -> None:
    meter = EmulatedDlmsMeter(start=START)
    for obis in (LOAD_PROFILE_OBIS, Obis.parse("1-0:1.8.0.255"), Obis.parse("0-0:1.0.0.255")):
        for class_id in (ClassId.PROFILE_GENERIC, ClassId.REGISTER, ClassId.CLOCK):
            access = AccessSelection(selector, parameters)  # type: ignore[arg-type]
            meter.get(AttributeDescriptor(class_id, obis, attribute), access, NOW)


@settings(max_examples=300, deadline=None)
@given(st.one_of(get_apdus.map(encode_apdu), st.binary(max_size=200)), st.booleans())
def test_client_raises_only_typed_errors_for_any_answer(payload: bytes, segmented: bool) -> None:
    client = ClientConnection(ClientSettings())
    server = ServerConnection(default_settings(), EmulatedDlmsMeter(start=START))
    for action in (client.connect, client.associate):
        action()
        server.receive_data(client.data_to_send(), NOW)
        client.receive_data(b"".join(server.frames_to_send()))
    client.get(AttributeDescriptor(ClassId.REGISTER, Obis.parse("1-0:1.8.0.255"), 2))
    client.data_to_send()
    answer = HdlcFrame(
        CLIENT, SERVER, Control(FrameType.I, True, 1, 2), LLC_RESPONSE + payload, segmented
    )
    try:
        client.receive_data(encode_frame(answer))
    except DlmsError:
        return
