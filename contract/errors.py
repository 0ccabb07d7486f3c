"""Typed errors of the contract.

Every failure names the *check* that failed (a stable, machine-readable word such as ``encoding``
or ``signature``) and carries enough context to tell a user what is wrong and what to do.
"""

from __future__ import annotations


class MeterchainError(Exception):
    """Base of every error meterchain raises on purpose."""

    check: str = "error"

    def __init__(self, message: str, *, check: str | None = None, **context: object) -> None:
        super().__init__(message)
        if check is not None:
            self.check = check
        self.context = context

    def diagnostics(self) -> str:
        """One line for a user: the failed check, the message and its context."""
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.context.items()))
        return f"[{self.check}] {self}" + (f" ({extra})" if extra else "")


class EncodingError(MeterchainError):
    """Bytes are not the one deterministic form of a contract object."""

    check = "encoding"


class FieldError(EncodingError):
    """A field is missing, of the wrong type, or out of its bounds."""

    check = "field"


class SignatureError(MeterchainError):
    """A signature is malformed, high-S, or does not verify."""

    check = "signature"


class KeyValidityError(MeterchainError):
    """A key is malformed, unknown, or not valid for the reading it signed."""

    check = "key"


class ProofError(MeterchainError):
    """An inclusion or consistency proof is malformed or does not lead to the claimed root."""

    check = "proof"


class NoteError(MeterchainError):
    """A signed note or checkpoint is malformed or its signature does not verify."""

    check = "checkpoint"
