"""Errors of a meter that is read over a serial bus.

On RS-485 most failures look alike (silence), so each error carries the port, device id and baud
rate, and a hint at the likely cause for the installer.
"""

from __future__ import annotations

from meterchain.bridge.errors import BridgeError


class MeterError(BridgeError):
    """A meter could not be read; ``hint`` says what to check first."""

    hint: str = ""

    def diagnostics(self) -> str:
        text = super().diagnostics()
        return text + (f"; hint: {self.hint}" if self.hint else "")


class MeterTimeout(MeterError):
    """The meter stayed silent: wrong id, wrong baud rate, or wiring."""

    hint = (
        "check the baud rate and the Modbus id; A/B swapped on RS-485 looks the same; "
        "a meter answers only its own id at its own speed"
    )


class MeterProtocolError(MeterError):
    """The meter answered, but not with a usable frame: exception response, bad CRC, short frame."""

    hint = (
        "an exception response means the meter is reachable but lacks these registers "
        "(wrong model?); a bad CRC or garbled frame points to noise, a missing terminator, "
        "or two devices sharing one id"
    )


class RegisterMapError(BridgeError):
    """A register map is unknown or inconsistent (overlapping entries, unknown type)."""
