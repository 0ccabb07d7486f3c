"""The OCMF record the gateway signs beside each reading (docs/format.md §12).

The outbox calls :class:`OcmfCompanion` with each reading's message inside the transaction that
stores it, so the record is signed once and kept beside its reading until the backend acks the
reading. ECDSA signatures are randomised: re-deriving the record at publish time would give other
bytes for the same page, which the backend would have to treat as a conflict.
"""

from __future__ import annotations

import importlib.metadata
import logging
import zlib

from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import parse_message
from meterchain.contract.ocmf import build_ocmf, sign_ocmf
from meterchain.contract.signing import Signer

log = logging.getLogger(__name__)

GATEWAY_ID = "meterchain-agent"

#: How the outbox keeps a record (issue 20: 544 B of text was two thirds of a row, and a row's
#: bytes are written three times: insert, delete, checkpoint): a version byte, then raw DEFLATE
#: primed with what every record shares. Version 1's dictionary must never change.
PACKED_V1 = 0x01
_DICT_V1 = (b'OCMF|{"FV":"1.0","GI":"meterchain-agent","GS":"","GV":"","PG":"F1","MS":"","IS":false,'
            b'"IT":"NONE","RD":[{"TM":"T00:00:00,000+0000 S","RV":,"RI":"1-0:1.8.0","RU":"kWh",'
            b'"EF":"","ST":"G"},{"TM":"T00:00:00,000+0000 S","RV":,"RI":"1-0:2.8.0","RU":"kWh",'
            b'"EF":"","ST":"G"}]}|{"SA":"ECDSA-secp256r1-SHA256","SE":"hex","SM":"application/x-der",'
            b'"SD":"30450221')
_MAX_RECORD = 64 * 1024


class PackedRecordError(ValueError):
    """A stored OCMF record cannot be unpacked (corrupt or of an unknown version)."""


def pack_record(record: str) -> bytes:
    """The stored form of an OCMF record (:func:`unpack_record` gives it back exactly)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=_DICT_V1)
    return bytes((PACKED_V1,)) + deflate.compress(record.encode()) + deflate.flush()


def unpack_record(stored: bytes) -> str:
    """The OCMF record of a stored one; raises :class:`PackedRecordError`."""
    if not stored or stored[0] != PACKED_V1:
        raise PackedRecordError(f"unknown packing 0x{stored[:1].hex() or '--'}")
    inflate = zlib.decompressobj(-15, zdict=_DICT_V1)
    try:
        text = inflate.decompress(stored[1:], _MAX_RECORD)
    except zlib.error as exc:
        raise PackedRecordError(f"not a DEFLATE stream: {exc}") from None
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
        raise PackedRecordError("truncated, too long or followed by other bytes")
    try:
        return text.decode()
    except UnicodeDecodeError as exc:
        raise PackedRecordError(f"not UTF-8: {exc}") from None


def agent_version() -> str:
    """The installed meterchain version (OCMF's GV and the status message's fw)."""
    try:
        return importlib.metadata.version("meterchain")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class OcmfCompanion:
    """Signs the OCMF record of a reading message with the device key."""

    def __init__(self, signer: Signer, *, gateway_id: str = GATEWAY_ID,
                 gateway_version: str | None = None) -> None:
        self.signer = signer
        self.gateway_id = gateway_id
        self.gateway_version = gateway_version or agent_version()

    def __call__(self, message: bytes) -> str | None:
        """The signed record, or None when the reading cannot be written as OCMF (a meter serial
        with '|'): the reading itself must never be held back by its companion."""
        try:
            reading = parse_message(message).reading
            payload = build_ocmf(reading, gateway_id=self.gateway_id,
                                 gateway_version=self.gateway_version)
            return sign_ocmf(payload, self.signer)
        except MeterchainError as exc:
            log.warning("event=ocmf_skipped detail=%r", exc.diagnostics())
            return None
