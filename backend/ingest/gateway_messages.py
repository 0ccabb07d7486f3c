"""The two messages a gateway sends beside its readings, checked (pure code, no I/O).

- **OCMF records** on ``meterchain/v1/<dev>/ocmf`` (docs/format.md §12): kept verbatim once the
  device key valid for their page (= the reading's seq) verifies them; a record for a page that
  already has other bytes is refused (the agent signs each record once and republishes the same
  bytes, so other bytes are a second signature over the same reading: evidence, not data).
- **status** on ``meterchain/v1/<dev>/status`` (contract/status.py): unsigned, bound to the device
  by the broker's ACL; kept as the gateway's newest health report when the device is enrolled.

Ingest stores both *before* it commits and acks the readings of the same batch; the agent
publishes a reading's OCMF record before the reading, so an acknowledged reading never leaves
its record behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterchain.backend.store.records import AcceptedOcmf, AcceptedStatus
from meterchain.contract.ack import device_from_topic
from meterchain.contract.errors import MeterchainError
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.ocmf import MAX_RECORD_SIZE, parse_ocmf
from meterchain.contract.policy import OCMF_RECORD, Evidence, Statement, VerificationError
from meterchain.contract.status import GatewayStatus

OCMF = "ocmf"
STATUS = "status"
SIDE_KINDS = (OCMF, STATUS)


@dataclass(frozen=True, slots=True)
class Refused:
    kind: str
    device: str | None
    reason: str  # size, encoding, topic, unknown-device, key-validity, signature
    detail: str


SideResult = AcceptedOcmf | AcceptedStatus | Refused


def split_messages(
    messages: Sequence[tuple[str, bytes]],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """(readings, OCMF and status messages), each in arrival order."""
    readings: list[tuple[str, bytes]] = []
    side: list[tuple[str, bytes]] = []
    for topic, payload in messages:
        (side if topic.rsplit("/", 1)[-1] in SIDE_KINDS else readings).append((topic, payload))
    return readings, side


def check_side_message(
    topic: str, payload: bytes, leaves: Mapping[str, Sequence[DeviceLeaf]], now: int
) -> SideResult:
    """Check one OCMF or status message; never raises."""
    kind = topic.rsplit("/", 1)[-1]
    try:
        if kind == OCMF:
            return _check_ocmf(topic, payload, leaves)
        return _check_status(topic, payload, leaves, now)
    except Exception as exc:  # noqa: BLE001 - a bug costs one message, never the ingest loop
        return Refused(kind, None, "internal", f"{type(exc).__name__}: {exc}")


def _check_ocmf(topic: str, payload: bytes, leaves: Mapping[str, Sequence[DeviceLeaf]]) -> SideResult:
    device = device_from_topic(topic, OCMF)
    if len(payload) > MAX_RECORD_SIZE:
        return Refused(OCMF, device, "size", f"{len(payload)} bytes is over {MAX_RECORD_SIZE}")
    try:
        record = parse_ocmf(payload)
    except MeterchainError as exc:
        return Refused(OCMF, device, "encoding", str(exc))
    fields = record.payload
    if fields.gateway_serial != device:
        return Refused(OCMF, device, "topic",
                       f"record of device {fields.gateway_serial} on topic {topic!r}")
    device_leaves = leaves.get(device)
    if not device_leaves:
        return Refused(OCMF, device, "unknown-device", f"device {device} is not enrolled")
    statement = Statement(device, fields.fiscal_page, record.payload_json.encode("ascii"),
                          record.signature)
    try:  # key-validity, low-s, signature: the contract's policy for OCMF records
        OCMF_RECORD.verify(Evidence(statement, device_leaves))
    except VerificationError as exc:
        if exc.check == "key-validity":
            return Refused(OCMF, device, "key-validity",
                           f"no key of device {device} is valid for page F{fields.fiscal_page}")
        return Refused(OCMF, device, "signature",
                       f"OCMF page F{fields.fiscal_page} does not verify with the device key")
    return AcceptedOcmf(device, fields.fiscal_page, fields.meter_serial,
                        fields.readings[0].time, bytes(payload))


def _check_status(topic: str, payload: bytes, leaves: Mapping[str, Sequence[DeviceLeaf]],
                  now: int) -> SideResult:
    device = device_from_topic(topic, STATUS)
    try:
        status = GatewayStatus.from_cbor(payload)
    except MeterchainError as exc:
        return Refused(STATUS, device, "encoding", str(exc))
    if status.device != device:
        return Refused(STATUS, device, "topic", f"status of {status.device} on topic {topic!r}")
    if not leaves.get(status.device):
        return Refused(STATUS, device, "unknown-device", f"device {device} is not enrolled")
    return AcceptedStatus(status, bytes(payload), now)


def check_side_batch(
    messages: Sequence[tuple[str, bytes]], leaves: Mapping[str, Sequence[DeviceLeaf]], now: int
) -> list[SideResult]:
    """Check a chunk (in a worker thread: OCMF verification is ECDSA and releases the GIL)."""
    return [check_side_message(topic, payload, leaves, now) for topic, payload in messages]
