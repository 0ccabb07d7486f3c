"""A password typed into a broker URL never shows, even unencoded and even when the URL is bad."""

from __future__ import annotations

import pytest
from meterchain.mqtt import BrokerUrl, BrokerUrlError, redact

SECRET = "s3cr"


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://gw:{SECRET}/x@host:1883",  # '/' ends the authority for urlsplit
        f"mqtt://gw:{SECRET}#x@host:1883",  # '#' starts a fragment
        f"mqtt://gw:{SECRET}?x@host:1883",  # '?' starts a query
        f"mqtt://gw:{SECRET}@host:99999",  # a bad port
        f"http://gw:{SECRET}@host",  # a wrong scheme
        f"gw:{SECRET}@host:1883",  # no scheme at all
        f"mqtt://gw:{SECRET}@[::1",  # an unclosed IPv6 bracket
    ],
)
def test_a_bad_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(BrokerUrlError) as refused:
        BrokerUrl.parse(url)
    assert SECRET not in str(refused.value)
    assert SECRET not in redact(url) and "***@" in redact(url)


def test_an_unencoded_at_sign_in_a_password_parses_and_stays_hidden() -> None:
    broker = BrokerUrl.parse(f"mqtt://gw:{SECRET}@x@host:1884")
    assert (broker.host, broker.port, broker.username, broker.password) == (
        "host", 1884, "gw", f"{SECRET}@x")
    assert SECRET not in str(broker) and SECRET not in repr(broker)


def test_port_zero_is_refused_not_replaced_by_the_default() -> None:
    with pytest.raises(BrokerUrlError, match="port 0"):
        BrokerUrl.parse("mqtt://host:0")
    assert BrokerUrl.parse("mqtt://host").port == 1883
    assert BrokerUrl.parse("mqtts://host").port == 8883
