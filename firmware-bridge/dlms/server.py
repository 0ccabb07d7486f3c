"""Sans-IO DLMS/COSEM server over HDLC: the meter side of the codec client.py uses.

``ServerConnection.receive_data(bytes, now)`` consumes what a client sent and queues the answer
frames (``frames_to_send()``). COSEM objects live behind ``CosemModel.get``; the emulator provides
one. Like a meter on a bus, it stays silent for frames with a bad check sequence or addressed to
another server, re-sends its last frame when the client repeats itself (a lost answer), and splits
long answers into HDLC segments and GET data blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from meterchain.bridge.dlms.apdu import (
    CONTEXT_LN,
    Aare,
    Aarq,
    AccessSelection,
    AcseServiceUser,
    AssociationResult,
    AttributeDescriptor,
    Conformance,
    DataAccessResult,
    ExceptionResponse,
    GetRequestNext,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithDataBlock,
    GetResponseWithList,
    GetResult,
    InitiateRequest,
    InitiateResponse,
    Rlre,
    Rlrq,
    decode_apdu,
    encode_apdu,
    encode_get_results,
)
from meterchain.bridge.dlms.axdr import Data, encode_data
from meterchain.bridge.dlms.errors import DlmsError, HdlcError
from meterchain.bridge.dlms.hdlc import (
    LLC_COMMAND,
    LLC_RESPONSE,
    Control,
    FrameReader,
    FrameType,
    HdlcAddress,
    HdlcFrame,
    LinkParameters,
    Reassembler,
    encode_frame,
    segment_info,
    strip_llc,
)
from meterchain.bridge.dlms.security import Authentication, LowestLevelSecurity

SERVER_CONFORMANCE = int(
    Conformance.BLOCK_TRANSFER_WITH_GET
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.PRIORITY_MGMT
    | Conformance.GET
    | Conformance.SELECTIVE_ACCESS
)
_BLOCK_OVERHEAD = 16  # GET-Response-With-Datablock header plus the raw-data length


class CosemModel(Protocol):
    """The meter's objects: one attribute read, at time ``now`` (UTC seconds)."""

    def get(
        self, descriptor: AttributeDescriptor, access: AccessSelection | None, now: int
    ) -> GetResult: ...


@dataclass(frozen=True, slots=True)
class ServerSettings:
    address: HdlcAddress = field(default_factory=lambda: HdlcAddress(1))
    # client address -> the security that client must use (16 public: lowest level)
    clients: dict[int, Authentication] = field(default_factory=lambda: {16: LowestLevelSecurity()})
    max_info_length: int = 128
    window_size: int = 1
    max_pdu_size: int = 1024
    conformance: int = SERVER_CONFORMANCE


class ServerConnection:
    """One meter's link layer and association, answering one client at a time."""

    def __init__(self, settings: ServerSettings, model: CosemModel) -> None:
        self.settings = settings
        self.model = model
        self.connected = False
        self.associated = False
        self.client: HdlcAddress | None = None
        self.link = LinkParameters()
        self.errors: list[DlmsError] = []  # what it silently dropped, for tests and logs
        self._reader = FrameReader()
        self._out: list[bytes] = []
        self._vs = 0
        self._vr = 0
        self._reassembler = Reassembler()
        self._tx_segments: list[bytes] = []
        self._last_frame: bytes | None = None
        self._client_max_pdu = settings.max_pdu_size
        self._blocks: list[bytes] = []
        self._block_number = 0
        self._block_invoke = 0
        self._auth: Authentication = LowestLevelSecurity()

    def frames_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def receive_data(self, data: bytes, now: int) -> None:
        self._reader.feed(data)
        for item in self._reader.frames():
            if isinstance(item, HdlcError):
                self._drop(item)
                continue
            try:
                self._on_frame(item, now)
            except DlmsError as exc:  # a malformed APDU inside a good frame
                self._drop(exc)

    def _drop(self, error: DlmsError) -> None:
        self.errors.append(error)
        del self.errors[:-64]

    # -- link ----------------------------------------------------------------------------------

    def _send(self, control: Control, info: bytes = b"", segmented: bool = False) -> None:
        assert self.client is not None
        frame = encode_frame(
            HdlcFrame(self.client, self.settings.address, control, info, segmented)
        )
        self._last_frame = frame
        self._out.append(frame)

    def _on_frame(self, frame: HdlcFrame, now: int) -> None:
        mine = self.settings.address
        if (frame.destination.upper, frame.destination.lower) != (mine.upper, mine.lower):
            self._drop(HdlcError("frame for another server", destination=str(frame.destination)))
            return
        kind = frame.kind
        if kind is FrameType.SNRM:
            self._on_snrm(frame)
            return
        if not self.connected or self.client is None or frame.source.upper != self.client.upper:
            self.client = frame.source
            self._send(Control(FrameType.DM))
            return
        if kind is FrameType.DISC:
            self._send(Control(FrameType.UA))
            self.connected = self.associated = False
            return
        if kind is FrameType.I:
            self._on_i_frame(frame, now)
            return
        if kind is FrameType.RR:
            if self._tx_segments and frame.control.recv_seq == self._vs:
                chunk = self._tx_segments.pop(0)
                self._send_i(chunk, segmented=bool(self._tx_segments))
            elif self._last_frame is not None:
                self._out.append(self._last_frame)
            return
        # FRMR info: the rejected control byte, our V(S)/V(R), and "W" (undefined control).
        rejected = frame.control.encode()
        self._send(
            Control(FrameType.FRMR), bytes([rejected, (self._vr << 5) | (self._vs << 1), 0x01])
        )

    def _on_snrm(self, frame: HdlcFrame) -> None:
        try:
            proposed = LinkParameters.decode(frame.info)
        except HdlcError as exc:
            self._drop(exc)
            self.client = frame.source
            self._send(Control(FrameType.FRMR), bytes([frame.control.encode(), 0, 0x02]))
            return
        own = self.settings
        # The UA states our own values: what we transmit, what we accept.
        self.link = LinkParameters(
            max_info_tx=min(own.max_info_length, proposed.max_info_rx),
            max_info_rx=min(own.max_info_length, proposed.max_info_tx),
            window_tx=min(own.window_size, proposed.window_rx),
            window_rx=min(own.window_size, proposed.window_tx),
        )
        self.client = frame.source
        self.connected, self.associated = True, False
        self._vs = self._vr = 0
        self._reassembler = Reassembler()
        self._tx_segments = []
        self._send(Control(FrameType.UA), self.link.encode())

    def _send_i(self, info: bytes, segmented: bool) -> None:
        self._send(Control(FrameType.I, True, self._vs, self._vr), info, segmented)
        self._vs = (self._vs + 1) % 8

    def _on_i_frame(self, frame: HdlcFrame, now: int) -> None:
        if frame.control.send_seq != self._vr:
            # The client repeats a frame: our answer was lost, so send it again.
            if self._last_frame is not None:
                self._out.append(self._last_frame)
            return
        self._vr = (self._vr + 1) % 8
        payload = self._reassembler.add(frame)
        if payload is None:
            self._send(Control(FrameType.RR, True, 0, self._vr))
            return
        apdu = strip_llc(payload, LLC_COMMAND)
        answer = self._on_apdu(apdu, now)
        chunks = segment_info(LLC_RESPONSE + answer, self.link.max_info_tx)
        self._tx_segments = chunks[1:]
        self._send_i(chunks[0], segmented=len(chunks) > 1)

    # -- application ---------------------------------------------------------------------------

    def _on_apdu(self, raw: bytes, now: int) -> bytes:
        if raw[:1] not in (b"\x60", b"\x62") and self.associated:
            raw = self._auth.unprotect(raw)
        try:
            apdu = decode_apdu(raw)
        except DlmsError as exc:
            self._drop(exc)
            return encode_apdu(ExceptionResponse(2, 2))  # service-unknown, service-not-supported
        if isinstance(apdu, Aarq):
            return encode_apdu(self._on_aarq(apdu))
        if isinstance(apdu, Rlrq):
            self.associated = False
            return encode_apdu(Rlre(0))
        if not self.associated:
            return encode_apdu(
                ExceptionResponse(1, 1)
            )  # service-not-allowed, operation-not-possible
        if isinstance(apdu, GetRequestNormal):
            result = self.model.get(apdu.descriptor, apdu.access, now)
            response = encode_apdu(GetResponseNormal(apdu.invoke_id_and_priority, result))
            if len(response) <= self._client_max_pdu or not isinstance(result, Data):
                return self._auth.protect(response)
            return self._auth.protect(
                self._start_blocks(apdu.invoke_id_and_priority, encode_data(result))
            )
        if isinstance(apdu, GetRequestWithList):
            results = tuple(self.model.get(d, a, now) for d, a in apdu.items)
            response = encode_apdu(GetResponseWithList(apdu.invoke_id_and_priority, results))
            if len(response) <= self._client_max_pdu:
                return self._auth.protect(response)
            return self._auth.protect(
                self._start_blocks(apdu.invoke_id_and_priority, encode_get_results(results))
            )
        if isinstance(apdu, GetRequestNext):
            return self._auth.protect(self._next_block(apdu))
        return encode_apdu(ExceptionResponse(2, 2))

    def _on_aarq(self, aarq: Aarq) -> Aare:
        assert self.client is not None
        auth = self.settings.clients.get(self.client.upper)

        def reject(diagnostic: int) -> Aare:
            return Aare(
                aarq.application_context, AssociationResult.REJECTED_PERMANENT, 1, diagnostic
            )

        if aarq.application_context != CONTEXT_LN:
            return reject(AcseServiceUser.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
        if auth is None:
            return reject(AcseServiceUser.NO_REASON_GIVEN)
        verdict = auth.verify_aarq(aarq)
        if verdict is not AcseServiceUser.NULL:
            return reject(verdict)
        initiate = aarq.user_information
        if not isinstance(initiate, InitiateRequest) or initiate.dlms_version < 6:
            return reject(AcseServiceUser.NO_REASON_GIVEN)
        self._auth = auth
        self.associated = True
        # 0 would mean "no limit" in some stacks; below 64 bytes no block could carry data.
        self._client_max_pdu = max(initiate.max_receive_pdu_size, 64)
        conformance = initiate.conformance & self.settings.conformance
        return Aare(
            CONTEXT_LN,
            AssociationResult.ACCEPTED,
            1,
            AcseServiceUser.NULL,
            mechanism=aarq.mechanism,
            user_information=InitiateResponse(conformance, self.settings.max_pdu_size),
        )

    def _start_blocks(self, invoke: int, raw: bytes) -> bytes:
        size = max(self._client_max_pdu - _BLOCK_OVERHEAD, 16)
        self._blocks = [raw[i : i + size] for i in range(0, len(raw), size)]
        self._block_number = 0
        self._block_invoke = invoke
        return self._emit_block()

    def _emit_block(self) -> bytes:
        chunk = self._blocks.pop(0)
        self._block_number += 1
        last = not self._blocks
        return encode_apdu(
            GetResponseWithDataBlock(self._block_invoke, last, self._block_number, chunk)
        )

    def _next_block(self, request: GetRequestNext) -> bytes:
        if not self._blocks:
            return encode_apdu(
                GetResponseWithDataBlock(
                    request.invoke_id_and_priority,
                    True,
                    request.block_number,
                    DataAccessResult.NO_LONG_GET_IN_PROGRESS,
                )
            )
        if request.block_number != self._block_number:
            self._blocks = []
            return encode_apdu(
                GetResponseWithDataBlock(
                    request.invoke_id_and_priority,
                    True,
                    request.block_number,
                    DataAccessResult.DATA_BLOCK_NUMBER_INVALID,
                )
            )
        return self._emit_block()
