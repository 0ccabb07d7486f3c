"""The backend's acknowledgement to one gateway, and the MQTT topics both sides use.

The agent deletes a reading from its outbox only on this ack, never on a broker's PUBACK:
Mosquitto keeps its queue in memory by default, and an agent that trusted PUBACK lost readings in
a fault run. The ack is published retained with QoS 1 on ``meterchain/v1/<device>/ack``, so a
gateway that reconnects gets the latest one at once.

``upto`` is the highest sequence number such that every sequence from 1 to it is either committed
or rejected for good; ``rejected`` lists rejections for good (newest last, at most
:data:`MAX_REJECTED`), each with a reason code and a human-readable detail. The agent moves those
readings to its quarantine, so one bad reading never stalls the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.contract import cbor
from meterchain.contract.errors import EncodingError, FieldError
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT

ACK_TYPE = "meterchain/ack/v1"
MAX_REJECTED = 256
MAX_ACK_SIZE = 64 * 1024
TOPIC_PREFIX = "meterchain/v1"


def readings_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device}/readings"


def ack_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device}/ack"


def telemetry_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device}/telemetry"


def status_topic(device: str) -> str:
    return f"{TOPIC_PREFIX}/{device}/status"


def ocmf_topic(device: str) -> str:
    """Where a gateway publishes the OCMF record it signed beside each reading (docs/format.md §12)."""
    return f"{TOPIC_PREFIX}/{device}/ocmf"


def device_from_topic(topic: str, kind: str = "readings") -> str | None:
    """The device id in ``meterchain/v1/<device>/<kind>``, or None if the topic is not one."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX or parts[3] != kind:
        return None
    return parts[2] if DEVICE_ID_RE.fullmatch(parts[2]) else None


@dataclass(frozen=True, slots=True)
class Rejection:
    seq: int
    reason: str  # a stable code such as "signature", "conflict", "key-validity"
    detail: str


@dataclass(frozen=True, slots=True)
class Ack:
    device: str
    upto: int
    rejected: tuple[Rejection, ...] = ()
    time: int = 0

    def to_cbor(self) -> bytes:
        return cbor.encode(
            {
                "t": ACK_TYPE,
                "dev": self.device,
                "upto": self.upto,
                "rejected": [[r.seq, r.reason, r.detail[:200]] for r in self.rejected[-MAX_REJECTED:]],
                "time": self.time,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> Ack:
        obj = cbor.decode(data, what="ack", max_size=MAX_ACK_SIZE)
        if not isinstance(obj, dict) or set(obj) != {"t", "dev", "upto", "rejected", "time"}:
            raise EncodingError("ack: must be a map of t, dev, upto, rejected, time", what="ack")
        if obj["t"] != ACK_TYPE:
            raise FieldError(f"ack: type must be {ACK_TYPE}", field="t")
        if not isinstance(obj["dev"], str) or not DEVICE_ID_RE.fullmatch(obj["dev"]):
            raise FieldError("ack: bad device id", field="dev")
        for name in ("upto", "time"):
            v = obj[name]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SAFE_INT:
                raise FieldError(f"ack: {name} must be an integer in [0, 2^53-1]", field=name)
        rejected = []
        if not isinstance(obj["rejected"], list) or len(obj["rejected"]) > MAX_REJECTED:
            raise FieldError("ack: rejected must be a list of at most 256", field="rejected")
        for item in obj["rejected"]:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], int)
                and not isinstance(item[0], bool)
                and 1 <= item[0] <= MAX_SAFE_INT
                and isinstance(item[1], str)
                and isinstance(item[2], str)
            ):
                raise FieldError("ack: each rejection is [seq, reason, detail]", field="rejected")
            rejected.append(Rejection(item[0], item[1], item[2]))
        return cls(obj["dev"], obj["upto"], tuple(rejected), obj["time"])
