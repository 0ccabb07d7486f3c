"""Witness cosignatures: C2SP tlog-cosignature v1, the Ed25519 type (signature type 0x04).

A cosignature is a note signature line on a checkpoint, ``— <witness name> base64(key ID ‖
timestamp ‖ Ed25519 signature)``, where the key ID is SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public
key)[:4], the timestamp a big-endian u64 of POSIX seconds, and the signed message

    cosignature/v1
    time <timestamp>
    <the checkpoint's note text>

Why Ed25519 and not ML-DSA-44 (which the spec recommends for new deployments): docs/decisions.md,
"Witness cosignatures: Ed25519". Keys are written like the log key: ``name+hash+base64(0x04 ‖
key)`` (a C2SP vkey), private ones ``PRIVATE+KEY+name+hash+base64(0x04 ‖ seed)``.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Iterable

from meterchain.contract.errors import NoteError
from meterchain.contract.note import (
    SIGNATURE_PREFIX,
    Ed25519VerifierKey,
    ed25519_public_key,
    split_note,
    strict_b64decode,
)

COSIGNATURE_TYPE = 0x04
COSIGNATURE_HEADER = "cosignature/v1"
MAX_TIMESTAMP = 2**63 - 1
#: timestamp (8) + Ed25519 signature (64), after the 4-byte key ID
SIGNATURE_SIZE = 72
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")


def cosigned_message(body: str, timestamp: int) -> bytes:
    """The bytes a v1 cosignature signs: header line, time line, the whole checkpoint text."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} out of range")
    if not body.endswith("\n"):
        raise NoteError("checkpoint text must end with a newline")
    return f"{COSIGNATURE_HEADER}\ntime {timestamp}\n{body}".encode()


def _raw_key(text: str, what: str) -> bytes:
    try:
        raw = strict_b64decode(text)
    except ValueError as exc:
        raise NoteError(f"{what} is {exc}") from None
    if len(raw) != 33 or raw[0] != COSIGNATURE_TYPE:
        raise NoteError(f"{what} is not an Ed25519 cosignature (type 0x04) key")
    return raw[1:]


class CosignerKey(Ed25519VerifierKey):
    """A witness's public key, as a verifier of its cosignatures (``name+hash+base64``).

    tlog-cosignature: the key ID is SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner
    public key)[:4]; all else is as for a note key (:class:`Ed25519VerifierKey`).
    """

    __slots__ = ()
    KEY_TYPE = COSIGNATURE_TYPE
    KIND = "cosigner key"
    NAME_KIND = "cosigner name"
    TYPE_KIND = "an Ed25519 cosignature (type 0x04) key"

    def verify(self, body: str, signature: bytes) -> int:
        """Check one cosignature (timestamp ‖ signature, without the key ID) over the checkpoint
        text ``body``; return its timestamp, or raise :class:`NoteError`."""
        from cryptography.exceptions import InvalidSignature

        if len(signature) != SIGNATURE_SIZE:
            raise NoteError(f"cosignature by {self.name} is {len(signature)} bytes, not {SIGNATURE_SIZE}",
                            check="cosignature", witness=self.name)
        timestamp = struct.unpack(">Q", signature[:8])[0]
        if timestamp > MAX_TIMESTAMP:
            raise NoteError(f"cosignature by {self.name} has a timestamp above 2^63 - 1",
                            check="cosignature", witness=self.name)
        try:
            ed25519_public_key(self.public_key).verify(
                signature[8:], cosigned_message(body, timestamp))
        except InvalidSignature:
            raise NoteError(f"cosignature by {self.name} does not verify", check="cosignature",
                            witness=self.name) from None
        return int(timestamp)


class Cosigner:
    """A witness's private key: signs timestamped cosignatures of checkpoints."""

    def __init__(self, name: str, seed: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if len(seed) != 32:
            raise NoteError("an Ed25519 private key seed is 32 bytes")
        self.name = name
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw)
        self.key = CosignerKey(name, public)

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> Cosigner:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a cosigner private key reads PRIVATE+KEY+<name>+<hash>+<base64 key>")
        cosigner = cls(parts[2], _raw_key(parts[4], "cosigner private key"))
        if f"{cosigner.key.key_hash:08x}" != parts[3].lower():
            raise NoteError("cosigner private key hash does not match its name and key")
        return cosigner

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([COSIGNATURE_TYPE]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key.key_hash:08x}+{b64}"

    def cosign(self, body: str, timestamp: int) -> str:
        """One signature line (ending in a newline) cosigning the checkpoint text ``body``.

        tlog-witness: "The cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT
        be zero."
        """
        if timestamp <= 0:
            raise NoteError("a witness cosignature's timestamp must not be zero")
        signature = self._key.sign(cosigned_message(body, timestamp))
        raw = struct.pack(">IQ", self.key.key_hash, timestamp) + signature
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(raw).decode()}\n"


def add_signatures(note: str, lines: Iterable[str]) -> str:
    """``note`` with more signature lines (each ``— name base64\\n``), none twice."""
    split_note(note)  # a well-formed note to begin with
    present = set(note[note.rfind("\n\n") + 2:].splitlines(keepends=True))
    extra = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX) or not line.endswith("\n") or line.count("\n") != 1:
            raise NoteError(f"{line[:40]!r} is not one signature line")
        if line not in present:
            present.add(line)
            extra.append(line)
    merged = note + "".join(extra)
    split_note(merged)
    return merged


def verify_cosignatures(note: str, keys: Iterable[CosignerKey]) -> dict[str, int]:
    """The witnesses among ``keys`` that cosigned ``note``, with their timestamps.

    signed-note: "Verifiers MUST ignore signatures from unknown keys, even if they share a name
    or ID (but not both) with a known key. If the key name and ID match a known key, verifiers
    MUST verify the signature." A known key's signature that fails raises :class:`NoteError`
    (signed-note: clients SHOULD reject the whole note).
    """
    text, signatures = split_note(note)
    by_id = {(key.name, key.key_hash): key for key in keys}
    signed: dict[str, int] = {}
    for sig in signatures:
        key = by_id.get((sig.name, sig.key_hash))
        if key is not None:
            signed[key.name] = key.verify(text, sig.signature)
    return signed
