"""Checkpoints: C2SP tlog-checkpoint bodies (origin, size, root), as signed notes.

No extension lines: tlog-checkpoint discourages them, and keeping our own data out of the
checkpoint lets standard witnesses and monitors read it. The log key's name is the origin.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from meterchain.contract.errors import NoteError
from meterchain.contract.note import NoteSigner, NoteVerifier, strict_b64decode, verify_note

#: A decimal without leading zeros, as C2SP notes and tlog-proof files write sizes and indexes.
DECIMAL_RE = re.compile(r"0|[1-9][0-9]{0,19}")
MAX_TREE_SIZE = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError(f"checkpoint size {self.size} out of range")
        if len(self.root) != 32:
            raise NoteError("checkpoint root must be 32 bytes")

    def body(self) -> str:
        """The note text: three lines, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise NoteError("checkpoint body must be exactly origin, size and root lines")
        origin, size_text, root_text = lines[:3]
        if not DECIMAL_RE.fullmatch(size_text):
            raise NoteError(f"checkpoint size {size_text!r} is not a decimal without leading zeros")
        try:
            root = strict_b64decode(root_text)
        except ValueError as exc:
            raise NoteError(f"checkpoint root is {exc}") from None
        return cls(origin=origin, size=int(size_text), root=root)

    def sign(self, signer: NoteSigner) -> str:
        if signer.name != self.origin:
            raise NoteError(f"log key {signer.name!r} does not name the origin {self.origin!r}")
        return signer.sign_note(self.body())


def open_checkpoint(note: str, verifier: NoteVerifier) -> Checkpoint:
    """Verify a signed checkpoint with the log key and parse it; its origin must be the key name."""
    checkpoint = Checkpoint.parse_body(verify_note(note, verifier))
    if checkpoint.origin != verifier.name:
        raise NoteError(
            f"checkpoint origin {checkpoint.origin!r} is not the log key's name {verifier.name!r}"
        )
    return checkpoint
