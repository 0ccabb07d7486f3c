"""The OCMF record the gateway signs beside each reading (docs/format.md §12).

The outbox calls :class:`OcmfCompanion` with each reading's message inside the transaction that
stores it, so the record is signed once and kept beside its reading until the backend acks the
reading. ECDSA signatures are randomised: re-deriving the record at publish time would give other
bytes for the same page, which the backend would have to treat as a conflict.
"""

from __future__ import annotations

import importlib.metadata
import logging

from meterchain.contract.errors import MeterchainError
from meterchain.contract.message import parse_message
from meterchain.contract.ocmf import build_ocmf, sign_ocmf
from meterchain.contract.signing import Signer

log = logging.getLogger(__name__)

GATEWAY_ID = "meterchain-agent"


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
