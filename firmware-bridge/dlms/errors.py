"""Typed errors of the DLMS/COSEM stack.

The hierarchy follows the layers, so a caller can decide what to do by catching one class:
``HdlcError`` (a frame is malformed: retry), ``LinkError`` (the link refused or broke: reconnect;
its ``PortError``: the serial port cannot be opened or used), ``AxdrError`` (a value does not decode),
``ApduError`` (an APDU is malformed or unexpected), ``AssociationError`` (the meter rejected us:
fix the configuration), ``DataAccessError`` (the meter answered, with an error for that
attribute: do not retry), ``RetriesExhausted`` (give up).
"""

from __future__ import annotations

from meterchain.bridge.errors import BridgeError


class DlmsError(BridgeError):
    """Base of every DLMS/COSEM error."""


class HdlcError(DlmsError):
    """A frame is malformed: bad flag, format, length, address encoding, HCS or FCS."""


class CrcError(HdlcError):
    """A header (HCS) or frame (FCS) check sequence does not match."""


class AddressError(HdlcError):
    """A frame is addressed to someone else, or comes from an unexpected peer."""


class LinkError(DlmsError):
    """The HDLC link is not in a state for this (DM, FRMR, unexpected frame, wrong sequence)."""


class PortError(LinkError):
    """The serial port failed: it cannot be opened (missing, no permission, in use), read or
    written (the adapter was unplugged)."""


class AxdrError(DlmsError):
    """Bytes are not a valid A-XDR encoded value, or a value cannot be encoded."""


class ApduError(DlmsError):
    """An APDU is malformed, unsupported or does not answer the request."""


class AssociationError(DlmsError):
    """The meter rejected the association (AARE result), or released it unexpectedly."""


class ServiceError(DlmsError):
    """The meter answered with an exception or confirmed-service-error APDU."""


class DataAccessError(DlmsError):
    """The meter answered a GET with a data-access-result error (e.g. object-unavailable)."""

    def __init__(self, message: str, *, result: int, **context: object) -> None:
        super().__init__(message, result=result, **context)
        self.result = result


class CosemValueError(DlmsError):
    """A value does not have the shape its COSEM class prescribes (e.g. scaler_unit, date-time)."""


class DlmsTimeoutError(DlmsError):
    """No complete answer arrived in time."""


class RetriesExhausted(DlmsError):
    """The retry budget is spent; ``last_fault`` says what failed last."""

    def __init__(self, message: str, *, last_fault: DlmsError | None, **context: object) -> None:
        super().__init__(message, last_fault=last_fault, **context)
        self.last_fault = last_fault
