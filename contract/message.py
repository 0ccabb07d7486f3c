"""The message a gateway publishes: a CBOR array ``[reading_bytes, signature]``.

Identity (docs/format.md §4): a reading is *the same reading* when (device, seq) and the reading
bytes are equal, whatever the signature bytes — ECDSA signatures are randomised and malleable, so
deduplicating on them would be wrong. The same (device, seq), or the same (device, meter, end),
with other reading bytes is a *conflict*.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, KeyValidityError
from meterchain.contract.reading import MAX_READING_SIZE, Reading
from meterchain.contract.signing import MAX_SIGNATURE_SIZE, Signer, key_id, parse_signature

#: Array header (1) + bstr header (3) + reading + bstr header (2) + signature.
MAX_MESSAGE_SIZE = 1 + 3 + MAX_READING_SIZE + 2 + MAX_SIGNATURE_SIZE


@dataclass(frozen=True, slots=True)
class SignedReading:
    """A parsed message: the reading, its exact bytes, and the signature over them."""

    reading: Reading
    reading_bytes: bytes
    signature: bytes

    def to_cbor(self) -> bytes:
        """The message bytes (also the reading leaf's data in the log).

        Verifying the signature is the verification policy's job (contract/policy.py:
        ``verify_reading`` with a known key, ``SIGNED_BY_DEVICE`` with the device's leaves).
        """
        return cbor.encode([self.reading_bytes, self.signature])


def sign_reading(reading: Reading, signer: Signer) -> SignedReading:
    """Sign a reading with the device key; the reading must name that key's id."""
    if reading.key_id != key_id(signer.public_key_der):
        raise KeyValidityError("reading names another key id than the signer's", check="key-id")
    data = reading.to_cbor()
    return SignedReading(reading=reading, reading_bytes=data, signature=signer.sign(data))


def parse_message(data: bytes) -> SignedReading:
    """Parse a message; cheap structural checks only (no signature verification)."""
    parts = (cbor.byte_string_array(data, 2)
             if type(data) is bytes and len(data) <= MAX_MESSAGE_SIZE else None)
    if parts is None:  # not the one form: the strict decoder says why
        obj = cbor.decode(data, what="message", max_size=MAX_MESSAGE_SIZE)
        if not (isinstance(obj, list) and len(obj) == 2):
            raise EncodingError("message: must be a CBOR array [reading, signature]", what="message")
        parts = obj
    reading_bytes, signature = parts
    if not isinstance(reading_bytes, bytes) or not isinstance(signature, bytes):
        raise EncodingError("message: both elements must be byte strings", what="message")
    reading = Reading.from_cbor(reading_bytes)
    parse_signature(signature)
    return SignedReading(reading=reading, reading_bytes=reading_bytes, signature=signature)


class Identity(enum.Enum):
    """How a newly received reading relates to one already stored."""

    NEW = "new"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


def compare(stored: SignedReading, received: SignedReading) -> Identity:
    """Compare two readings that share (device, seq) or (device, meter, end)."""
    a, b = stored.reading, received.reading
    same_seq = (a.device, a.seq) == (b.device, b.seq)
    same_slot = (a.device, a.meter, a.end) == (b.device, b.meter, b.end)
    if not (same_seq or same_slot):
        return Identity.NEW
    if stored.reading_bytes == received.reading_bytes:
        return Identity.DUPLICATE
    return Identity.CONFLICT
