"""Live telemetry: what a gateway's meter shows *now* (power, voltages), deliberately unsigned.

A reading (``reading.py``) is signed, logged and billed; telemetry is none of these. It exists so
a household sees its power change within seconds, between the 15-minute readings. It is published
with QoS 0 on ``meterchain/v1/<device>/telemetry`` (a lost sample is replaced by the next one),
kept by the backend in memory only, and always shown as "live · unsigned": nothing that is
settled or proven may ever be derived from it.

The payload is a deterministic CBOR map (docs/format.md §11): ``t`` = ``"meterchain/telemetry/v1"``,
``dev`` (device id), ``meter`` (serial), ``time`` (UTC seconds of the meter read), ``p`` (net
active power in W, positive = import; ``null`` when the meter has no power register) and ``v``
(voltages in decivolts per phase, L1 first; 0 to 3 entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT, METER_SERIAL_RE

TELEMETRY_TYPE = "meterchain/telemetry/v1"
MAX_TELEMETRY_SIZE = 512
#: |power| bound: 100 MW is far above any meter a gateway reads, and keeps JSON clients exact.
MAX_POWER_W = 100_000_000
#: 6553.5 V: far above any low-voltage grid, and fits the meters' 16-bit registers.
MAX_VOLTAGE_DV = 65_535
MAX_PHASES = 3
_KEYS = frozenset({"t", "dev", "meter", "time", "p", "v"})


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One live sample of one meter."""

    device: str
    meter: str
    time: int
    power_w: int | None
    voltage_dv: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check(self.device, self.meter, self.time, self.power_w, self.voltage_dv)

    def to_cbor(self) -> bytes:
        return cbor.encode({"t": TELEMETRY_TYPE, "dev": self.device, "meter": self.meter,
                            "time": self.time, "p": self.power_w, "v": list(self.voltage_dv)})

    @classmethod
    def from_cbor(cls, data: bytes) -> Telemetry:
        """Parse one payload; anything malformed is a :class:`FieldError` or :class:`EncodingError`."""
        obj = cbor.decode(data, what="telemetry", max_size=MAX_TELEMETRY_SIZE)
        if not isinstance(obj, dict) or set(obj) != _KEYS:
            raise EncodingError("telemetry: must be a map of t, dev, meter, time, p, v",
                                what="telemetry")
        if obj["t"] != TELEMETRY_TYPE:
            raise FieldError(f"telemetry: type must be {TELEMETRY_TYPE}", field="t")
        voltages = obj["v"]
        if not isinstance(voltages, list):
            raise FieldError("telemetry: v must be a list of decivolts", field="v")
        return cls(obj["dev"], obj["meter"], obj["time"], obj["p"], tuple(voltages))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(device: object, meter: object, time: object, power: object, voltages: object) -> None:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise FieldError("telemetry: bad device id", field="dev", value=str(device)[:80])
    if not isinstance(meter, str) or not METER_SERIAL_RE.fullmatch(meter):
        raise FieldError("telemetry: bad meter serial", field="meter", value=str(meter)[:80])
    if not _is_int(time) or not 0 <= time <= MAX_SAFE_INT:
        raise FieldError("telemetry: time must be UTC seconds in [0, 2^53-1]", field="time")
    if power is not None and (not _is_int(power) or not -MAX_POWER_W <= power <= MAX_POWER_W):
        raise FieldError(f"telemetry: p must be null or watts in ±{MAX_POWER_W}", field="p")
    if not isinstance(voltages, tuple) or len(voltages) > MAX_PHASES or not all(
        _is_int(v) and 0 <= v <= MAX_VOLTAGE_DV for v in voltages
    ):
        raise FieldError(f"telemetry: v must be at most {MAX_PHASES} decivolt values in "
                         f"[0, {MAX_VOLTAGE_DV}]", field="v")
