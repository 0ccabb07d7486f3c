"""Where a broker is and how to log in: one URL type for every MQTT client of meterchain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrlError(ValueError):
    """A broker URL or its login or TLS files do not make sense; the message never holds a
    password. ``field`` names what is wrong: ``url``, ``password`` or ``cert_file``."""

    def __init__(self, message: str, *, field: str = "url") -> None:
        super().__init__(message)
        self.field = field


def redact(url: str) -> str:
    """``url`` without its user info (``mqtt://***@host``): safe for logs and error messages.

    Everything before the last ``@`` is user info: a password typed without percent-encoding
    may hold ``/``, ``?``, ``#`` or ``@``, and none of it may show.
    """
    if "@" not in url:
        return url
    login, _, rest = url.rpartition("@")
    scheme, sep, _ = login.partition("://")
    return f"{scheme}{sep}***@{rest}" if sep else f"***@{rest}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS for an ``mqtts://`` broker: the CA to trust (None: the system's) and a client
    certificate if the broker identifies clients by certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    """``mqtt[s]://[user[:password]@]host[:port][/topic prefix]``, parsed and checked.

    ``str()`` is the broker without credentials (safe to log); ``repr()`` masks the password.
    ``tls`` is None for plain ``mqtt://`` and set for ``mqtts://``.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsFiles | None = None
    topic_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.host:
            raise BrokerUrlError(f"broker {self} has no host")
        if not 0 < self.port < 65536:
            raise BrokerUrlError(f"broker {self.scheme}://{self.host}: port {self.port} is not "
                                 "in 1-65535")
        if self.password is not None and not self.username:
            raise BrokerUrlError(f"broker {self}: a password needs a username", field="password")
        tls = self.tls
        if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
            raise BrokerUrlError(f"broker {self}: a client certificate needs both cert_file and "
                                 "key_file", field="cert_file")

    @classmethod
    def parse(cls, url: str, *, tls: TlsFiles | None = None) -> BrokerUrl:
        """Parse ``url``; ``tls`` gives the files of an ``mqtts://`` URL (system CAs without).

        Raises :class:`BrokerUrlError` with the URL redacted.
        """
        shown = redact(url)
        usage = "must look like mqtt://[user:pass@]host[:port] or mqtts://…"
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise BrokerUrlError(f"broker URL {shown!r} {usage}") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise BrokerUrlError(f"broker URL {shown!r} {usage}")
        try:
            port = DEFAULT_PORTS[parts.scheme] if parts.port is None else parts.port
        except ValueError:
            raise BrokerUrlError(f"broker URL {shown!r} has a bad port") from None
        if parts.scheme == "mqtts":
            tls = tls or TlsFiles()
        elif tls is not None and tls != TlsFiles():
            raise BrokerUrlError(f"broker URL {shown!r}: TLS files are set but the URL is "
                                 "mqtt://; use mqtts://")
        else:
            tls = None
        return cls(
            parts.hostname,
            port,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password is not None else None,
            tls,
            parts.path.strip("/"),
        )

    @property
    def scheme(self) -> str:
        return "mqtt" if self.tls is None else "mqtts"

    def with_login(self, username: str | None, password: str | None) -> BrokerUrl:
        """The same broker with another login (a config's ``username``/``password`` keys)."""
        return replace(self, username=username, password=password)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = f"/{self.topic_prefix}" if self.topic_prefix else ""
        return f"{self.scheme}://{host}:{self.port}{prefix}"

    def __repr__(self) -> str:
        login = ""
        if self.username:
            login = self.username + (":***" if self.password is not None else "") + "@"
        shown = str(self).replace("://", f"://{login}", 1)
        return f"BrokerUrl({shown!r}, tls={self.tls!r})"
