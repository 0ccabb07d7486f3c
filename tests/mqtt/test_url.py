"""BrokerUrl: one parser for every broker URL; credentials never in str, repr or an error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from meterchain.mqtt import Backoff, BrokerUrl, BrokerUrlError, TlsFiles, random_client_id, redact, unique_client_id


def test_plain_and_tls_urls_with_their_default_ports() -> None:
    plain = BrokerUrl.parse("mqtt://gw-1:p%40ss@broker.example")
    assert (plain.host, plain.port, plain.username, plain.password) == (
        "broker.example", 1883, "gw-1", "p@ss")
    assert plain.tls is None and plain.scheme == "mqtt" and plain.topic_prefix == ""
    tls = BrokerUrl.parse("mqtts://broker.example/utility/sw1/", tls=TlsFiles(Path("ca.pem")))
    assert (tls.port, tls.scheme, tls.topic_prefix) == (8883, "mqtts", "utility/sw1")
    assert tls.tls == TlsFiles(ca_file=Path("ca.pem"))
    assert BrokerUrl.parse("mqtts://h:1884").tls == TlsFiles()  # the system's CAs
    assert BrokerUrl.parse("mqtt://[::1]:1883").host == "::1"
    assert str(BrokerUrl.parse("mqtt://[::1]:1883")) == "mqtt://[::1]:1883"


def test_credentials_are_never_shown() -> None:
    url = BrokerUrl.parse("mqtt://gw-1:s3cret@broker.example:1883")
    assert str(url) == "mqtt://broker.example:1883"
    assert "s3cret" not in repr(url) and "gw-1:***@" in repr(url)
    assert "s3cret" not in repr(url.with_login("gw-2", "other")) + str(url)
    assert redact("mqtt://u:s3cret@h:1/x") == "mqtt://***@h:1/x"
    assert redact("mqtt://h:1") == "mqtt://h:1"


@pytest.mark.parametrize(
    ("url", "tls", "field"),
    [
        ("http://u:s3cret@h", None, "url"),
        ("mqtt://", None, "url"),
        ("mqtt://u:s3cret@h:99999", None, "url"),
        ("mqtt://u:s3cret@h:port", None, "url"),
        ("h:1883", None, "url"),
        ("mqtt://:s3cret@h", None, "password"),
        ("mqtt://u:s3cret@h", TlsFiles(Path("ca.pem")), "url"),
        ("mqtts://u:s3cret@h", TlsFiles(cert_file=Path("c.pem")), "cert_file"),
    ],
)
def test_errors_name_the_field_and_never_the_password(url: str, tls: TlsFiles | None,
                                                       field: str) -> None:
    with pytest.raises(BrokerUrlError) as info:
        BrokerUrl.parse(url, tls=tls)
    assert info.value.field == field
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value)


def test_a_password_needs_a_username_after_a_login_change_too() -> None:
    url = BrokerUrl.parse("mqtt://h")
    with pytest.raises(BrokerUrlError, match="needs a username") as info:
        url.with_login(None, "s3cret")
    assert "s3cret" not in str(info.value)


def test_backoff_is_capped_jittered_and_quick_at_first() -> None:
    backoff, rng = Backoff(), random.Random(7)
    first = [backoff.delay(0, rng) for _ in range(200)]
    assert min(first) >= 0.25 and max(first) <= 0.5  # a restarted broker is found within ~1 s
    assert len(set(first)) > 150  # jittered: a fleet does not come back in the same instant
    for attempt in range(40):
        delay = backoff.delay(attempt, rng)
        assert backoff.cap(attempt) / 2 <= delay <= backoff.cap(attempt) <= backoff.maximum
    assert backoff.cap(10**6) == backoff.maximum
    with pytest.raises(ValueError):
        Backoff(initial=0)


def test_client_ids() -> None:
    assert random_client_id() != random_client_id()
    assert random_client_id().startswith("meterchain-")
    assert unique_client_id("mc").startswith("mc-") and unique_client_id("mc").count("-") >= 2
