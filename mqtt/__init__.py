"""meterchain's MQTT shell: the one place that talks to an MQTT client library.

The agent (publisher, telemetry, Home Assistant) and the backend (ingest, live view, webhooks)
open their connections here, so the broker URL, the MQTT 5 -> 3.1.1 fallback, client ids, TLS,
the backoff and the reconnect loop are written once (docs/mqtt.md). It imports neither side.
``meterchain.mqtt.broker`` starts a broker for the demo and the tests.
"""

from meterchain.mqtt._backoff import Backoff
from meterchain.mqtt._client import (
    Connection,
    ConnectOptions,
    Message,
    MqttError,
    Protocol,
    ProtocolUnsupported,
    ReasonCode,
    Will,
    connect,
    random_client_id,
    unique_client_id,
)
from meterchain.mqtt._loop import Failure, connection_error, stay_connected
from meterchain.mqtt._url import BrokerUrl, BrokerUrlError, TlsFiles, redact

__all__ = [
    "Backoff",
    "BrokerUrl",
    "BrokerUrlError",
    "ConnectOptions",
    "Connection",
    "Failure",
    "Message",
    "MqttError",
    "Protocol",
    "ProtocolUnsupported",
    "ReasonCode",
    "TlsFiles",
    "Will",
    "connect",
    "connection_error",
    "random_client_id",
    "redact",
    "stay_connected",
    "unique_client_id",
]
