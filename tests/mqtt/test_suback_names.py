"""A SUBACK reads the same under MQTT 3.1.1 as under MQTT 5: granted QoS or a failure by name
(3.1.1 answers bare integers; they are not paho error numbers)."""

from __future__ import annotations

from meterchain.mqtt import BrokerUrl, Protocol, connect
from meterchain.mqtt._client import _reason_code
from meterchain.mqtt.broker import RunningBroker


async def test_a_granted_subscription_is_named_alike_under_both_protocols(
    broker: RunningBroker,
) -> None:
    protocols = [Protocol.V311] + ([Protocol.V5] if broker.kind == "mosquitto" else [])
    for protocol in protocols:
        async with connect(BrokerUrl.parse(broker.url), protocols=(protocol,)) as connection:
            (granted,) = await connection.subscribe("names/#", qos=1)
            assert (granted.value, str(granted), granted.is_failure) == (1, "Granted QoS 1", False)


def test_a_311_refusal_is_a_failure_by_name() -> None:
    refused = _reason_code(0x80)  # what a 3.1.1 broker answers for a refused filter
    assert refused.is_failure and str(refused) == "Failure"
    assert str(_reason_code(0)) == "Granted QoS 0"
