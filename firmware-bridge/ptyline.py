"""What an emulated meter can learn about the line a client opened: the speed it configured.

A pseudo-terminal carries bytes at any speed, so an emulator that should behave like a meter on a
real serial line (silent when the client talks at another baud rate) asks the pty which speed the
client set: on Linux ``termios.tcgetattr`` on either end returns the slave's termios, so the
master sees the client's ``cfsetospeed``.
"""

from __future__ import annotations

import termios

_BAUD_BY_CONSTANT = {
    getattr(termios, f"B{rate}"): rate
    for rate in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
    if hasattr(termios, f"B{rate}")
}
LINE_SPEEDS = tuple(sorted(_BAUD_BY_CONSTANT.values()))  # what an emulated line can be set to


def pty_speed(fd: int) -> int | None:
    """The baud rate configured on a pty (either end), or None for a speed we do not know."""
    output_speed = termios.tcgetattr(fd)[5]
    return _BAUD_BY_CONSTANT.get(output_speed)


def set_pty_speed(fd: int, baudrate: int) -> None:
    """Start the line at ``baudrate`` (what it runs at until a client configures it)."""
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = getattr(termios, f"B{baudrate}")
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
