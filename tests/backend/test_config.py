"""The backend's configuration: a malformed broker URL is a ConfigError without the password."""

from __future__ import annotations

import pytest
from meterchain.backend.config import BackendConfig, ConfigError


@pytest.mark.parametrize("url", ["mqtt://ingest:s3cret@broker:99999", "tcp://ingest:s3cret@broker",
                                 "mqtt://:s3cret@broker"])
def test_a_bad_broker_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        BackendConfig.load(broker=url)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value.diagnostics())
    assert "broker" in str(info.value)


def test_mqtts_is_a_broker_url_too() -> None:
    assert BackendConfig.load(broker="mqtts://ingest:s3cret@broker").broker.startswith("mqtts://")
