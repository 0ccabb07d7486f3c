"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and log keys.

A signed note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(key hash ‖ signature)>``. The key hash is the first four bytes of
SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key). Keys are written as the Go ``note`` package writes them:
``<name>+<hex hash>+<base64(0x01 ‖ key)>``, private keys with a ``PRIVATE+KEY+`` prefix.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self

from meterchain.contract.errors import NoteError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ED25519_TYPE = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
MAX_NOTE_SIZE = 16_384
#: Control characters a note's text must not contain (all but newline).
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")


@functools.lru_cache(maxsize=1024)  # asked per signature line on every verification
def _key_hash(name: str, public_key: bytes, key_type: int = ED25519_TYPE) -> int:
    # signed-note: SHA-256(<name> || "\n" || <signature type> || <public key>)[:4]
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str, what: str = "key name") -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"{what} {name!r} must be non-empty, without spaces or '+'")


def strict_b64decode(text: str) -> bytes:
    """Standard base64 (RFC 4648 §4) in its one canonical form, or ValueError.

    Non-zero padding bits would let two texts decode to the same bytes; refusing them keeps
    every byte of a note or bundle significant.
    """
    try:  # binascii directly: every proof hash and signature line of a bundle comes through here
        data = text.encode("ascii")
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise ValueError("not base64") from None
    if binascii.b2a_base64(raw, newline=False) != data:
        raise ValueError("not canonical base64")
    return raw


def _b64decode(text: str, what: str) -> bytes:
    try:
        return strict_b64decode(text)
    except ValueError as exc:
        raise NoteError(f"{what} is {exc}") from None


@dataclass(frozen=True, slots=True)
class Ed25519VerifierKey:
    """A public Ed25519 key of one signed-note signature type: ``name+hash+base64(type ‖ key)``.

    Note keys (type 0x01) and witness cosigner keys (type 0x04, meterchain.contract.cosignature)
    differ only in that byte, which enters the key hash and the encoding, and in what errors call
    them; subclasses set the class attributes below.
    """

    KEY_TYPE: ClassVar[int] = ED25519_TYPE
    #: what errors call the key, its name, and the key type
    KIND: ClassVar[str] = "verifier key"
    NAME_KIND: ClassVar[str] = "key name"
    TYPE_KIND: ClassVar[str] = "an Ed25519 (type 0x01) key"

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name, self.NAME_KIND)
        if len(self.public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")

    @property
    def key_hash(self) -> int:
        return _key_hash(self.name, self.public_key, self.KEY_TYPE)

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([self.KEY_TYPE]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash:08x}+{b64}"

    @classmethod
    def parse(cls, text: str) -> Self:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError(f"a {cls.KIND} reads <name>+<hash>+<base64 key>")
        name, hash_hex, b64 = parts
        raw = _b64decode(b64, cls.KIND)
        if len(raw) != 33 or raw[0] != cls.KEY_TYPE:
            raise NoteError(f"{cls.KIND} is not {cls.TYPE_KIND}")
        key = cls(name, raw[1:])
        if len(hash_hex) != 8 or f"{key.key_hash:08x}" != hash_hex.lower():
            raise NoteError(f"{cls.KIND} hash does not match its name and key")
        return key


@functools.lru_cache(maxsize=1024)
def ed25519_public_key(public_key: bytes) -> Ed25519PublicKey:
    """The ``cryptography`` key object for 32 raw bytes, made once per key: a verifier checks
    every checkpoint with the same few keys (the log's, its witnesses'), and making the object
    costs a few µs each time."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key)


class NoteVerifier(Ed25519VerifierKey):
    """A public Ed25519 note key (type 0x01): ``name+hash+base64``."""

    __slots__ = ()

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            ed25519_public_key(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


class NoteSigner:
    """A private Ed25519 note key (the log key); ``PRIVATE+KEY+name+hash+base64(0x01‖seed)``."""

    def __init__(self, name: str, seed: bytes) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        _check_name(name)
        if len(seed) != 32:
            raise NoteError("an Ed25519 private key seed is 32 bytes")
        self.name = name
        self._seed = seed
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.verifier = NoteVerifier(name=name, public_key=public)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        import os

        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key reads PRIVATE+KEY+<name>+<hash>+<base64 key>")
        raw = _b64decode(parts[4], "signer key")
        if len(raw) != 33 or raw[0] != ED25519_TYPE:
            raise NoteError("signer key is not an Ed25519 (type 0x01) key")
        signer = cls(parts[2], raw[1:])
        if f"{signer.verifier.key_hash:08x}" != parts[3].lower():
            raise NoteError("signer key hash does not match its name and key")
        return signer

    def __str__(self) -> str:
        b64 = base64.b64encode(bytes([ED25519_TYPE]) + self._seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_hash:08x}+{b64}"

    def sign_raw(self, message: bytes) -> bytes:
        """A bare Ed25519 signature (used for batch headers, which are not notes)."""
        return self._key.sign(message)

    def sign_note(self, text: str) -> str:
        """Return ``text`` as a signed note with this key's signature line."""
        _check_text(text)
        sig = self._key.sign(text.encode())
        line = base64.b64encode(struct.pack(">I", self.verifier.key_hash) + sig).decode()
        return f"{text}\n{SIGNATURE_PREFIX}{self.name} {line}\n"


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    key_hash: int
    signature: bytes


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if _CONTROL_RE.search(text):
        raise NoteError("note text must not contain control characters other than newline")
    if "\n\n" in text:
        raise NoteError("note text must not contain blank lines")


def split_note(note: str) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and signature lines (nothing is verified here)."""
    if len(note.encode()) > MAX_NOTE_SIZE:
        raise NoteError(f"note is larger than {MAX_NOTE_SIZE} bytes")
    sep = note.rfind("\n\n")
    if sep < 0:
        raise NoteError("signed note has no blank line before its signatures")
    text, sig_block = note[: sep + 1], note[sep + 2 :]
    _check_text(text)
    if not sig_block.endswith("\n"):
        raise NoteError("signed note must end with a newline")
    signatures = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"signature line {line[:40]!r} does not start with an em dash")
        fields = line[len(SIGNATURE_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise NoteError("signature line must be '— <name> <base64>'")
        raw = _b64decode(fields[1], "signature")
        if len(raw) < 5:
            raise NoteError("signature is too short")
        signatures.append(Signature(fields[0], struct.unpack(">I", raw[:4])[0], raw[4:]))
    if not signatures:
        raise NoteError("signed note has no signature lines")
    return text, signatures


def verify_note(note: str, verifier: NoteVerifier) -> str:
    """Return the note's text if ``verifier`` signed it; raise :class:`NoteError` otherwise."""
    text, signatures = split_note(note)
    mine = [s for s in signatures if s.name == verifier.name and s.key_hash == verifier.key_hash]
    if not mine:
        raise NoteError(f"note carries no signature by {verifier.name} ({verifier.key_hash:08x})")
    for sig in mine:
        if not verifier.verify(text.encode(), sig.signature):
            raise NoteError(f"signature by {verifier.name} does not verify")
    return text
