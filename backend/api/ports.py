"""Is the HTTP port free? Asked before a service creates anything (a log key, a broker session,
a database), so a taken port is one clear error with its fix, not uvicorn's bare "Errno 98"
after the rest has started."""

from __future__ import annotations

import socket

from meterchain.contract.errors import MeterchainError


class PortTaken(MeterchainError):
    """The HTTP port is in use (another backend or demo, or another program)."""


def check_port_free(host: str, port: int, flag: str = "--http-port") -> None:
    """Bind ``host:port`` once and let go; raise :class:`PortTaken` naming the fix if it fails."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                       socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortTaken(
                f"port {port} on {host} is already in use ({exc.strerror}): another meterchain "
                f"backend or demo may be running. Stop it, or choose another port with {flag} "
                f"(e.g. {flag} {port + 1}).", check="port-taken", host=host, port=port,
            ) from None
