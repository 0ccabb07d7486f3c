"""The ingest checks for one message, in order, cheapest first; pure code, no I/O.

size → CBOR shape (incl. strict DER, low-S) → topic's device = reading's device → device enrolled
→ a key valid for that sequence → key id → signature. Only the last costs real CPU (ECDSA
verify, ~50 µs, and it releases the GIL). Each failure has a stable reason code; the ones a
gateway must learn about (its own reading, provably bad for good) are *permanent* and go into its ack.

Only a reading whose signature verifies under the device's key valid for its sequence says
anything about the device (issue 14): every other rejection is unauthenticated junk, counted per
topic and reason but never in the device's ack, so a forger cannot consume a device's sequence
numbers. The permanent reasons are ``conflict`` (decided at commit, between two verified
readings) and ``future`` (a verified reading whose interval ends more than
:data:`MAX_FUTURE_SECONDS` after the backend's clock: a gateway clock that runs ahead, issue 18;
the comparison is cheap and made first, but only an authenticated reading consumes its sequence).

Junk is attributed to the device its *topic* names only if that device is enrolled (otherwise to
nobody), which keeps the aggregated counts bounded by the registry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meterchain.backend.store import RejectionRecord, VerifiedReading
from meterchain.backend.store.leafdata import pack_leaf_data
from meterchain.backend.store.records import VerifiedGap
from meterchain.contract.ack import device_from_topic
from meterchain.contract.errors import MeterchainError
from meterchain.contract.gap import GapMessage, is_gap_message
from meterchain.contract.leaves import DeviceLeaf
from meterchain.contract.merkle import leaf_hash
from meterchain.contract.message import MAX_MESSAGE_SIZE, parse_message
from meterchain.contract.policy import SIGNED_BY_DEVICE, Evidence, Statement, VerificationError

#: How far a reading's interval end may lie ahead of the backend's clock (gateway clock skew).
MAX_FUTURE_SECONDS = 300

#: Reason codes; permanent ones are rejected for good and reported in the device's ack.
REASONS = {
    "size": False,
    "encoding": False,
    "low-s": False,
    "topic": False,
    "unknown-device": False,
    "key-validity": False,
    "key-id": False,
    "signature": False,
    "conflict": True,
    "future": True,
    "internal": False,
}


@dataclass(frozen=True, slots=True)
class Checked:
    """The result of checking one message: exactly one of ``reading``, ``gap`` and
    ``rejection``."""

    reading: VerifiedReading | None = None
    rejection: RejectionRecord | None = None
    gap: VerifiedGap | None = None


def _reject(reason: str, detail: str, now: int, device: str | None = None,
            seq: int | None = None) -> Checked:
    return Checked(rejection=RejectionRecord(device, seq, reason, detail, REASONS[reason], now))


def topic_blame(topic: str, leaves: Mapping[str, Sequence[DeviceLeaf]]) -> str | None:
    """The device a rejected message is counted under: the topic's, if it is enrolled."""
    device = device_from_topic(topic)
    return device if device is not None and leaves.get(device) else None


def check_message(
    topic: str, payload: bytes, leaves: Mapping[str, Sequence[DeviceLeaf]], now: int
) -> Checked:
    """Run every check on one MQTT message; never raises."""
    try:
        return _check(topic, payload, leaves, now)
    except Exception as exc:  # a bug must cost one message, never the ingest loop
        return _reject("internal", f"{type(exc).__name__}: {exc}", now)


def _check(
    topic: str, payload: bytes, leaves: Mapping[str, Sequence[DeviceLeaf]], now: int
) -> Checked:
    blame = topic_blame(topic, leaves)
    if len(payload) > MAX_MESSAGE_SIZE:
        return _reject("size", f"{len(payload)} bytes is over the limit of {MAX_MESSAGE_SIZE}",
                       now, blame)
    topic_device = device_from_topic(topic)
    if is_gap_message(payload):
        return _check_gap(topic_device, payload, leaves, now, blame)
    try:
        signed = parse_message(payload)
    except MeterchainError as exc:
        reason = "low-s" if exc.check == "low-s" else "encoding"
        return _reject(reason, str(exc), now, blame)
    reading = signed.reading
    ahead = reading.end - now  # cheap, first; acted on only once the signature verified
    if topic_device != reading.device:
        return _reject(
            "topic",
            f"reading of device {reading.device} published on topic {topic[:120]!r}",
            now, blame, reading.seq,
        )
    device_leaves = leaves.get(reading.device)
    if not device_leaves:
        return _reject("unknown-device", f"device {reading.device} is not enrolled", now,
                       None, reading.seq)
    try:  # key-validity, key-id, low-s, signature: the contract's policy (contract/policy.py)
        SIGNED_BY_DEVICE.verify(Evidence(Statement.of_reading(signed), device_leaves))
    except VerificationError as exc:
        return _reject(exc.check, str(exc), now, reading.device, reading.seq)
    if ahead > MAX_FUTURE_SECONDS:
        return _reject(
            "future",
            f"interval ends {ahead} s after the backend's clock (at most {MAX_FUTURE_SECONDS} s"
            " allowed): the gateway's clock runs ahead; fix its time sync (NTP)",
            now, reading.device, reading.seq,
        )
    return Checked(
        reading=VerifiedReading(
            device=reading.device,
            seq=reading.seq,
            meter=reading.meter,
            start=reading.start,
            end=reading.end,
            import_wh=reading.import_wh,
            export_wh=reading.export_wh,
            message=payload,
            stored=pack_leaf_data(payload),  # here: the verify threads run in parallel
            reading_digest=hashlib.sha256(signed.reading_bytes).digest(),
            leaf_hash=leaf_hash(payload),
            received_at=now,
        )
    )


def _check_gap(topic_device: str | None, payload: bytes,
               leaves: Mapping[str, Sequence[DeviceLeaf]], now: int, blame: str | None) -> Checked:
    """A gap declaration (contract/gap.py) counts only if the device's key valid for every
    declared sequence signed it; anything else is junk like a forged reading."""
    try:
        message = GapMessage.from_cbor(payload)
    except MeterchainError as exc:
        return _reject("encoding", f"gap message: {exc}", now, blame)
    gap = message.declaration
    if topic_device != gap.device:
        return _reject("topic", f"gap of device {gap.device} on the topic of {topic_device}",
                       now, blame, gap.first)
    device_leaves = leaves.get(gap.device)
    if not device_leaves:
        return _reject("unknown-device", f"device {gap.device} is not enrolled", now, None,
                       gap.first)
    # The key must be valid at both ends and at every key change inside the range.
    seqs = {gap.first, gap.last} | {leaf.valid_from for leaf in device_leaves
                                     if gap.first < leaf.valid_from <= gap.last}
    for seq in sorted(seqs):
        statement = Statement(gap.device, seq, message.declaration_bytes, message.signature,
                              gap.key_id)
        try:
            SIGNED_BY_DEVICE.verify(Evidence(statement, device_leaves))
        except VerificationError as exc:
            return _reject(exc.check, f"gap {gap.first}..{gap.last}: {exc}", now, gap.device,
                           gap.first)
    return Checked(gap=VerifiedGap(gap.device, gap.first, gap.last, payload,
                                   leaf_hash(payload), now))


def check_batch(
    messages: Sequence[tuple[str, bytes]], leaves: Mapping[str, Sequence[DeviceLeaf]], now: int
) -> list[Checked]:
    """Check a chunk of messages (run in a worker thread: verification releases the GIL)."""
    return [check_message(topic, payload, leaves, now) for topic, payload in messages]
