"""Sans-IO DLMS/COSEM client over HDLC: requests in, bytes out; bytes in, events out.

The I/O layer (serial_client.py, or a test) does three things only::

    conn.connect()                        # queue an SNRM
    transport.write(conn.data_to_send())  # after every call
    events = conn.receive_data(chunk)     # feed what the meter sent; may queue more bytes
    conn.timeout()                        # when nothing complete arrived in time

The connection handles HDLC sequence numbers, segmentation in both directions (RR), GET block
transfer (GET-Request-Next), and retries: a frame with a bad check sequence, the wrong address or a
timeout re-sends the last frame (the peer re-sends its last answer for a duplicate), at most
``max_retries`` times per exchange, then ``RetriesExhausted`` names the last fault. One request
is in
flight at a time, as DLMS clients do.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from meterchain.bridge.dlms.apdu import (
    CLIENT_CONFORMANCE,
    Aare,
    AccessSelection,
    AssociationResult,
    AttributeDescriptor,
    ConfirmedServiceError,
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
    decode_get_results,
    encode_apdu,
)
from meterchain.bridge.dlms.axdr import decode_data_exact
from meterchain.bridge.dlms.errors import (
    AddressError,
    ApduError,
    AssociationError,
    DlmsError,
    DlmsTimeoutError,
    HdlcError,
    LinkError,
    RetriesExhausted,
    ServiceError,
)
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

MAX_BLOCKS = 100_000
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the client proposes; the meter's answers narrow it (see ``negotiated``)."""

    server_address: HdlcAddress = field(default_factory=lambda: HdlcAddress(1))
    client_address: int = 16
    authentication: Authentication = field(default_factory=LowestLevelSecurity)
    max_info_length: int = 128
    window_size: int = 1
    max_pdu_size: int = 1024
    conformance: int = int(CLIENT_CONFORMANCE)
    max_retries: int = 3


class ClientState(enum.Enum):
    DISCONNECTED = "disconnected"
    LINK_UP = "link up"
    ASSOCIATED = "associated"


# Events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    parameters: LinkParameters


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    aare: Aare
    conformance: int
    max_pdu_size: int


@dataclass(frozen=True, slots=True)
class GetCompleted:
    """Results in request order: ``Data`` or the data-access-result code of each attribute."""

    results: tuple[GetResult, ...]


@dataclass(frozen=True, slots=True)
class ReleaseCompleted:
    reason: int | None


@dataclass(frozen=True, slots=True)
class LinkClosed:
    pass


Event = LinkEstablished | AssociationAccepted | GetCompleted | ReleaseCompleted | LinkClosed


class _Op(enum.Enum):
    SNRM = "snrm"
    AARQ = "aarq"
    GET = "get"
    GET_LIST = "get with list"
    RLRQ = "rlrq"
    DISC = "disc"


class ClientConnection:
    """The client side of one HDLC link and its association. No I/O, no clocks."""

    def __init__(self, settings: ClientSettings | None = None) -> None:
        self.settings = settings or ClientSettings()
        self.state = ClientState.DISCONNECTED
        self.link = LinkParameters(
            self.settings.max_info_length,
            self.settings.max_info_length,
            self.settings.window_size,
            self.settings.window_size,
        )
        self.conformance = 0
        self.server_max_pdu = 0
        self.faults: list[DlmsError] = []  # every fault seen, for diagnostics
        self._reader = FrameReader()
        self._reassembler = Reassembler()
        self._out = bytearray()
        self._address = HdlcAddress(self.settings.client_address)
        self._vs = 0
        self._vr = 0
        self._op: _Op | None = None
        self._last_frame: bytes | None = None
        self._retries = 0
        self._tx_segments: list[bytes] = []
        self._invoke = 0
        self._invoke_byte = 0
        self._blocks: list[bytes] = []
        self._block_number = 0
        self._block_bytes = 0
        self._requested = 0

    # -- requests ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._op is not None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def connect(self) -> None:
        """Queue an SNRM proposing our information lengths and window."""
        self._require(None, "connect")
        self._vs = self._vr = 0
        self._reader.reset()
        self._reassembler = Reassembler()
        info = LinkParameters(
            self.settings.max_info_length,
            self.settings.max_info_length,
            self.settings.window_size,
            self.settings.window_size,
        ).encode()
        self._send_frame(_Op.SNRM, self._frame(Control(FrameType.SNRM), info))

    def associate(self) -> None:
        """Queue an AARQ built by the authentication policy (LN referencing)."""
        self._require(ClientState.LINK_UP, "associate")
        initiate = InitiateRequest(self.settings.conformance, self.settings.max_pdu_size)
        aarq = self.settings.authentication.build_aarq(initiate)
        # The AARQ itself is never ciphered; HLS ciphers inside user-information instead.
        self._send_apdu(_Op.AARQ, encode_apdu(aarq), protect=False)

    def get(self, descriptor: AttributeDescriptor, access: AccessSelection | None = None) -> None:
        """Queue GET-Request-Normal; ``GetCompleted`` carries one result."""
        self._require(ClientState.ASSOCIATED, "get")
        request = GetRequestNormal(self._next_invoke(), descriptor, access)
        self._requested = 1
        self._send_apdu(_Op.GET, encode_apdu(request))

    def get_with_list(
        self, items: Sequence[tuple[AttributeDescriptor, AccessSelection | None]]
    ) -> None:
        """Queue GET-Request-With-List; ``GetCompleted`` carries one result per item."""
        self._require(ClientState.ASSOCIATED, "get with list")
        if not items:
            raise ApduError("GET-With-List needs at least one attribute")
        request = GetRequestWithList(self._next_invoke(), tuple(items))
        self._requested = len(items)
        self._send_apdu(_Op.GET_LIST, encode_apdu(request))

    def release(self) -> None:
        """Queue RLRQ (normal release)."""
        self._require(ClientState.ASSOCIATED, "release")
        self._send_apdu(_Op.RLRQ, encode_apdu(Rlrq(0)), protect=False)

    def disconnect(self) -> None:
        """Queue DISC; the link closes on UA or DM."""
        if self._op is not None:
            raise LinkError("a request is still in flight", operation=self._op.value)
        self._send_frame(_Op.DISC, self._frame(Control(FrameType.DISC)))

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the meter; returns completed events (and may queue bytes to send)."""
        self._reader.feed(data)
        events: list[Event] = []
        for item in self._reader.frames():
            if isinstance(item, HdlcError):
                self._fault(item)
                continue
            event = self._on_frame(item)
            if event is not None:
                events.append(event)
        return events

    def timeout(self) -> None:
        """Nothing complete arrived in time: re-send the last frame, or give up."""
        if self._op is None:
            return
        self._reader.reset()
        self._fault(DlmsTimeoutError("no answer from the meter", operation=self._op.value))

    # -- internals -----------------------------------------------------------------------------

    def _require(self, state: ClientState | None, action: str) -> None:
        if self._op is not None:
            raise LinkError("a request is still in flight", operation=self._op.value, action=action)
        if state is not None and self.state is not state:
            raise LinkError(f"cannot {action} while {self.state.value}", state=self.state.value)

    def _next_invoke(self) -> int:
        self._invoke = self._invoke % 15 + 1
        self._invoke_byte = 0xC0 | self._invoke  # high priority, confirmed
        return self._invoke_byte

    def _frame(self, control: Control, info: bytes = b"", segmented: bool = False) -> bytes:
        return encode_frame(
            HdlcFrame(self.settings.server_address, self._address, control, info, segmented)
        )

    def _send_frame(self, op: _Op, frame: bytes) -> None:
        self._op = op
        self._retries = 0
        self._last_frame = frame
        self._out += frame

    def _send_apdu(self, op: _Op, apdu: bytes, protect: bool = True) -> None:
        if protect:
            apdu = self.settings.authentication.protect(apdu)
        chunks = segment_info(LLC_COMMAND + apdu, self.link.max_info_tx)
        self._tx_segments = chunks[1:]
        self._send_frame(op, self._i_frame(chunks[0], segmented=len(chunks) > 1))

    def _i_frame(self, info: bytes, segmented: bool) -> bytes:
        frame = self._frame(Control(FrameType.I, True, self._vs, self._vr), info, segmented)
        self._vs = (self._vs + 1) % 8
        return frame

    def _fault(self, fault: DlmsError) -> None:
        """Record a fault; while waiting, re-send the last frame within the retry budget."""
        self.faults.append(fault)
        del self.faults[:-32]
        if self._op is None or self._last_frame is None:
            return
        self._retries += 1
        if self._retries > self.settings.max_retries:
            op = self._op
            self._abort()
            raise RetriesExhausted(
                "meter did not answer correctly within the retry budget",
                last_fault=fault,
                operation=op.value,
                retries=self.settings.max_retries,
            ) from fault
        self._out += self._last_frame

    def abort(self) -> None:
        """Forget the exchange in flight (the caller gave up on it, e.g. was cancelled).

        The link counts as down: the next ``connect()`` starts again with SNRM, which also resets
        the meter's side.
        """
        self._reader.reset()
        self._reset_blocks()
        self._abort()

    def _abort(self) -> None:
        """Forget the exchange in flight; after a broken link the caller must reconnect."""
        self._op = None
        self._last_frame = None
        self._tx_segments = []
        self._reassembler = Reassembler()
        self.state = ClientState.DISCONNECTED

    def _finish(self) -> None:
        self._op = None
        self._last_frame = None
        self._retries = 0

    def _on_frame(self, frame: HdlcFrame) -> Event | None:
        if frame.destination.upper != self.settings.client_address or (
            (frame.source.upper, frame.source.lower)
            != (self.settings.server_address.upper, self.settings.server_address.lower)
        ):
            self._fault(
                AddressError(
                    "frame from an unexpected address",
                    source=str(frame.source),
                    destination=str(frame.destination),
                    expected_source=str(self.settings.server_address),
                )
            )
            return None
        if self._op is None:
            self.faults.append(LinkError("unsolicited frame ignored", kind=frame.kind.value))
            return None
        kind = frame.kind
        if kind is FrameType.UA:
            return self._on_ua(frame)
        if kind is FrameType.DM:
            if self._op is _Op.DISC:
                self._finish()
                self.state = ClientState.DISCONNECTED
                return LinkClosed()
            operation = self._op.value
            self._abort()
            raise LinkError("meter answered DM: it is in disconnected mode", operation=operation)
        if kind is FrameType.FRMR:
            operation = self._op.value
            self._abort()
            raise LinkError(
                "meter rejected our frame (FRMR)", operation=operation, info=frame.info.hex()
            )
        if kind is FrameType.RR and self._tx_segments and frame.control.recv_seq == self._vs:
            chunk = self._tx_segments.pop(0)
            self._send_frame(self._op, self._i_frame(chunk, segmented=bool(self._tx_segments)))
            return None
        if kind is FrameType.I and self._op not in (_Op.SNRM, _Op.DISC):
            return self._on_i_frame(frame)
        self._fault(LinkError("unexpected frame", kind=kind.value, operation=self._op.value))
        return None

    def _on_ua(self, frame: HdlcFrame) -> Event | None:
        if self._op is _Op.SNRM:
            answered = LinkParameters.decode(frame.info)
            mine = self.settings
            # UA values are the meter's: its tx is what we receive, its rx what we may send.
            self.link = LinkParameters(
                max_info_tx=min(answered.max_info_rx, mine.max_info_length),
                max_info_rx=min(answered.max_info_tx, mine.max_info_length),
                window_tx=min(answered.window_rx, mine.window_size),
                window_rx=min(answered.window_tx, mine.window_size),
            )
            self._finish()
            self.state = ClientState.LINK_UP
            return LinkEstablished(self.link)
        if self._op is _Op.DISC:
            self._finish()
            self.state = ClientState.DISCONNECTED
            return LinkClosed()
        self._fault(LinkError("unexpected UA", operation=self._op.value if self._op else None))
        return None

    def _on_i_frame(self, frame: HdlcFrame) -> Event | None:
        if frame.control.send_seq != self._vr:
            # A re-sent copy of a frame we already have: harmless, wait for the right one.
            self.faults.append(
                LinkError(
                    "duplicate I-frame ignored", got=frame.control.send_seq, expected=self._vr
                )
            )
            return None
        self._vr = (self._vr + 1) % 8
        payload = self._reassembler.add(frame)
        if payload is None and self._reassembler.size > MAX_RESPONSE_BYTES:
            self._abort()
            raise ApduError("segmented response too large", size=MAX_RESPONSE_BYTES)
        if payload is None:
            # More segments follow: acknowledge this one, which also asks for the next.
            rr = self._frame(Control(FrameType.RR, True, 0, self._vr))
            self._send_frame(self._op or _Op.GET, rr)
            return None
        if len(payload) > MAX_RESPONSE_BYTES:
            raise ApduError("response too large", size=len(payload))
        apdu = strip_llc(payload, LLC_RESPONSE)
        op = self._op
        if op is not _Op.AARQ and op is not _Op.RLRQ:
            apdu = self.settings.authentication.unprotect(apdu)
        try:
            decoded = decode_apdu(apdu)
        except DlmsError:
            self._finish()
            raise
        return self._on_apdu(decoded)

    def _on_apdu(self, apdu: object) -> Event | None:
        op = self._op
        if isinstance(apdu, ExceptionResponse):
            self._finish()
            raise ServiceError(
                "meter answered with an exception-response",
                state_error=apdu.state_error,
                service_error=apdu.service_error,
                operation=op.value if op else None,
            )
        if isinstance(apdu, ConfirmedServiceError):
            self._finish()
            raise ServiceError(
                "meter answered with a confirmed-service-error",
                service=apdu.service,
                error_group=apdu.error_group,
                value=apdu.value,
            )
        if op is _Op.AARQ and isinstance(apdu, Aare):
            return self._on_aare(apdu)
        if op is _Op.RLRQ and isinstance(apdu, Rlre):
            self._finish()
            self.state = ClientState.LINK_UP
            return ReleaseCompleted(apdu.reason)
        if op in (_Op.GET, _Op.GET_LIST) and isinstance(
            apdu, (GetResponseNormal, GetResponseWithDataBlock, GetResponseWithList)
        ):
            if apdu.invoke_id_and_priority & 0x0F != self._invoke_byte & 0x0F:
                self._finish()
                raise ApduError(
                    "response to another invoke-id",
                    got=apdu.invoke_id_and_priority,
                    expected=self._invoke_byte,
                )
            return self._on_get_response(apdu)
        self._finish()
        raise ApduError(
            "unexpected APDU for the request in flight",
            apdu=type(apdu).__name__,
            operation=op.value if op else None,
        )

    def _on_aare(self, aare: Aare) -> Event:
        self._finish()
        info = aare.user_information
        if aare.result != AssociationResult.ACCEPTED:
            raise AssociationError(
                "meter rejected the association",
                result=aare.result,
                diagnostic_source=aare.diagnostic_source,
                diagnostic=aare.diagnostic,
                user_information=info,
            )
        if not isinstance(info, InitiateResponse):
            raise AssociationError(
                "AARE accepted without an InitiateResponse", user_information=info
            )
        self.settings.authentication.check_aare(aare)
        self.conformance = info.conformance & self.settings.conformance
        self.server_max_pdu = info.max_receive_pdu_size
        self.state = ClientState.ASSOCIATED
        self._invoke = 0
        return AssociationAccepted(aare, self.conformance, self.server_max_pdu)

    def _on_get_response(
        self, resp: GetResponseNormal | GetResponseWithDataBlock | GetResponseWithList
    ) -> Event | None:
        if isinstance(resp, GetResponseNormal):
            self._finish()
            return GetCompleted((resp.result,))
        if isinstance(resp, GetResponseWithList):
            self._finish()
            if len(resp.results) != self._requested:
                raise ApduError(
                    "result count differs from the request",
                    got=len(resp.results),
                    expected=self._requested,
                )
            return GetCompleted(resp.results)
        expected = self._block_number + 1
        if resp.block_number != expected:
            self._reset_blocks()
            self._finish()
            raise ApduError(
                "block number out of sequence", got=resp.block_number, expected=expected
            )
        if not isinstance(resp.raw, bytes):
            self._reset_blocks()
            self._finish()
            # The whole transfer failed: every requested attribute gets that result.
            return GetCompleted((resp.raw,) * self._requested)
        self._blocks.append(resp.raw)
        self._block_bytes += len(resp.raw)
        self._block_number = resp.block_number
        if self._block_bytes > MAX_RESPONSE_BYTES or len(self._blocks) > MAX_BLOCKS:
            self._reset_blocks()
            self._finish()
            raise ApduError("block transfer too large", bytes=self._block_bytes)
        if not resp.last_block:
            self._send_apdu(self._op or _Op.GET, encode_apdu(GetRequestNext(self._invoke_byte, resp.block_number)))
            return None
        raw = b"".join(self._blocks)
        op = self._op
        self._reset_blocks()
        self._finish()
        if op is _Op.GET_LIST:
            results, end = decode_get_results(raw)
            if end != len(raw) or len(results) != self._requested:
                raise ApduError(
                    "block-transferred results do not match the request",
                    extra=len(raw) - end,
                    count=len(results),
                )
            return GetCompleted(results)
        return GetCompleted((decode_data_exact(raw),))

    def _reset_blocks(self) -> None:
        self._blocks = []
        self._block_number = 0
        self._block_bytes = 0
