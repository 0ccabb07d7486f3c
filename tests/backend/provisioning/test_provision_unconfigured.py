"""A backend without a gateway broker URL refuses provisioning with a clear client error, not a 5xx."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from meterchain.backend.api.app import create_app
from meterchain.backend.provisioning.tokens import ProvisioningSettings
from meterchain.contract.note import NoteSigner


def test_provisioning_off_is_a_404_that_says_how_to_turn_it_on(tmp_path: Path) -> None:
    app = create_app(str(tmp_path / "mc.db"), "s3cret", NoteSigner.generate("log.test").verifier,
                     ProvisioningSettings())
    with TestClient(app) as client:
        answer = client.post("/api/v1/provision", json={
            "token": "x" * 40, "public_key": "AAAA", "identity": "pi-1", "device": "gw-1", "next_seq": 1})
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert body["error"] == "not-configured" and "gateway_broker_url" in body["hint"]
