"""Typed errors of the firmware bridge (meter protocols, transports, emulators).

The bridge imports nothing else of meterchain, so it has its own error base. Every error carries
keyword context (port, address, frame bytes, OBIS code, ...) so a log line says what went wrong where.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.context = context

    def diagnostics(self) -> str:
        """One line for a user: the message and its context."""
        extra = ", ".join(f"{k}={v!r}" for k, v in sorted(self.context.items()))
        return f"{self}" + (f" ({extra})" if extra else "")
