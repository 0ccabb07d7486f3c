"""A gateway's status message: how it is doing, published every few minutes for fleet health.

Published on ``meterchain/v1/<device>/status`` (QoS 1, not retained). It is not signed: the broker's
per-device ACL binds the topic to the gateway's login, and nothing in it is evidence of energy,
only of health. The backend keeps the newest per gateway and shows last seen, backlog, drift and
silence (docs/utility-guide.md). A CBOR map, deterministic like every contract object (§1):

``t`` ``"meterchain/status/v1"``, ``dev`` device id, ``time`` when sent (UTC s), ``fw`` agent
version (1-64 printable ASCII), ``uptime`` seconds, ``outbox`` readings not yet acked,
``quarantined`` readings rejected for good, ``meters``: up to 64 maps ``{"meter": serial,
"last": interval end of its last stored reading or null, "drift": meter clock minus gateway clock
in whole seconds (may be negative) or null when the meter has no clock}``.

Version 2 (``"meterchain/status/v2"``) is version 1 plus ``alarms``: 1 to 8 alarm codes (1-64
printable ASCII each, e.g. ``ack-refused:ahead``, ``ack-unverified``, ``gap``; docs/agent.md)
the gateway raised in the last day. A gateway without alarms sends version 1, byte for byte as
before; a reader accepts both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT, METER_SERIAL_RE

STATUS_TYPE = "meterchain/status/v1"
STATUS_V2_TYPE = "meterchain/status/v2"
MAX_ALARMS = 8
MAX_STATUS_SIZE = 16 * 1024
MAX_METERS = 64
#: Drift beyond a day is not drift but a meter without a set clock; refuse rather than store.
MAX_DRIFT = 86_400 * 366
_FIRMWARE_RE = re.compile(r"[\x20-\x7e]{1,64}")
_KEYS = {"t", "dev", "time", "fw", "uptime", "outbox", "quarantined", "meters"}


@dataclass(frozen=True, slots=True)
class MeterHealth:
    meter: str
    last_read: int | None  # interval end of the newest reading stored for it
    drift: int | None  # meter minus gateway, seconds; None: no clock read


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    device: str
    time: int
    firmware: str
    uptime: int
    outbox_depth: int
    quarantined: int
    meters: tuple[MeterHealth, ...] = ()
    alarms: tuple[str, ...] = ()  # version 2 only (issue 14)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not DEVICE_ID_RE.fullmatch(self.device):
            raise FieldError("status: bad device id", field="dev")
        if not isinstance(self.firmware, str) or not _FIRMWARE_RE.fullmatch(self.firmware):
            raise FieldError("status: fw must be 1-64 printable ASCII characters", field="fw")
        for name in ("time", "uptime", "outbox_depth", "quarantined"):
            _uint(getattr(self, name), name)
        if len(self.alarms) > MAX_ALARMS or not all(
            isinstance(a, str) and _FIRMWARE_RE.fullmatch(a) for a in self.alarms
        ):
            raise FieldError(f"status: at most {MAX_ALARMS} alarms of 1-64 printable ASCII",
                             field="alarms")
        if len(self.meters) > MAX_METERS:
            raise FieldError(f"status: at most {MAX_METERS} meters", field="meters")
        for m in self.meters:
            if not isinstance(m.meter, str) or not METER_SERIAL_RE.fullmatch(m.meter):
                raise FieldError("status: bad meter serial", field="meter")
            if m.last_read is not None:
                _uint(m.last_read, "last")
            if m.drift is not None and (
                not isinstance(m.drift, int) or isinstance(m.drift, bool) or abs(m.drift) > MAX_DRIFT
            ):
                raise FieldError(f"status: drift must be an integer within ±{MAX_DRIFT}", field="drift")

    def to_cbor(self) -> bytes:
        extra: dict[str, object] = {"alarms": list(self.alarms)} if self.alarms else {}
        return cbor.encode(
            {
                **extra,
                "t": STATUS_V2_TYPE if self.alarms else STATUS_TYPE,
                "dev": self.device,
                "time": self.time,
                "fw": self.firmware,
                "uptime": self.uptime,
                "outbox": self.outbox_depth,
                "quarantined": self.quarantined,
                "meters": [
                    {"meter": m.meter, "last": m.last_read, "drift": m.drift} for m in self.meters
                ],
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> GatewayStatus:
        """Parse a status message; anything but the one deterministic form is refused."""
        obj = cbor.decode(data, what="status", max_size=MAX_STATUS_SIZE)
        v2 = isinstance(obj, dict) and obj.get("t") == STATUS_V2_TYPE
        keys = _KEYS | {"alarms"} if v2 else _KEYS
        if not isinstance(obj, dict) or set(obj) != keys:
            raise EncodingError(f"status: must be a map of {sorted(keys)}", what="status")
        if obj["t"] not in (STATUS_TYPE, STATUS_V2_TYPE):
            raise FieldError(f"status: type must be {STATUS_TYPE} or {STATUS_V2_TYPE}", field="t")
        alarms = obj.get("alarms", [])
        if not isinstance(alarms, list) or (v2 and not alarms):
            raise FieldError("status: alarms must be a non-empty list", field="alarms")
        meters = obj["meters"]
        if not isinstance(meters, list):
            raise FieldError("status: meters must be a list", field="meters")
        health = []
        for item in meters:
            if not isinstance(item, dict) or set(item) != {"meter", "last", "drift"}:
                raise FieldError("status: each meter is {meter, last, drift}", field="meters")
            health.append(MeterHealth(item["meter"], item["last"], item["drift"]))
        return cls(
            device=obj["dev"],
            time=obj["time"],
            firmware=obj["fw"],
            uptime=obj["uptime"],
            outbox_depth=obj["outbox"],
            quarantined=obj["quarantined"],
            meters=tuple(health),
            alarms=tuple(alarms),
        )


def _uint(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
        raise FieldError(f"status: {name} must be an integer in [0, 2^53-1]", field=name)
