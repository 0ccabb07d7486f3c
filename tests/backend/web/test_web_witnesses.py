"""The households' verification panel under a witness policy (docs/witness.md): it requires the
quorum, lists `witnesses` among the checks and names the witnesses that cosigned; a checkpoint
short of the quorum is shown as a proof that did not verify, naming the check."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.backend.provisioning.tokens import ProvisioningSettings
from meterchain.backend.store import open_store
from meterchain.contract.cosignature import Cosigner, add_signatures
from meterchain.contract.note import NoteSigner, split_note
from meterchain.contract.tlog_policy import Witness, WitnessPolicy, parse_policy

from tests.support.web import NOW, PASSWORDS, build

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WITNESSES = [Cosigner.generate(f"witness.test/w{i}") for i in (1, 2, 3)]


def panel(scenario, policy: WitnessPolicy) -> str:  # type: ignore[no-untyped-def]
    app = create_app(str(scenario.db), "s3cret", scenario.log_key.verifier,
                     ProvisioningSettings(witness_policy=policy.to_text()))
    app.state.web.clock = lambda: NOW
    app.state.web.settlements = scenario.settlements
    with TestClient(app) as http:
        answer = http.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]},
                           follow_redirects=False)
        assert answer.status_code == 303
        day = http.get("/households/h-alice/points/mp-alice-house/day/2024-03-31").text
        link = re.search(r'href="(/households/h-alice/points/mp-alice-house/readings/gw-alice/\d+)"', day)
        assert link is not None
        return http.get(link.group(1)).text


async def test_panel_requires_the_quorum_and_names_the_witnesses(tmp_path: Path) -> None:
    scenario = await build(tmp_path)
    store = await open_store(scenario.db)
    row = await store.latest_checkpoint()
    text = split_note(row.note)[0]
    cosigned = add_signatures(row.note, [c.cosign(text, NOW) for c in WITNESSES[:2]])
    assert await store.add_cosignatures(row.size, cosigned)
    await store.close()
    witnesses = [Witness(f"w{i}", c.key) for i, c in enumerate(WITNESSES, 1)]

    shown = panel(scenario, WitnessPolicy.k_of_n(2, witnesses))
    assert "<li>✓ witnesses</li>" in shown
    assert 'Cosigned by the witnesses <strong>w1, w2</strong>' in shown
    assert "the log's witness policy requires 2 of w1, w2, w3" in shown
    assert "--log-key log.pub --policy witnesses.policy</code>" in shown  # how to check it offline

    short = panel(scenario, WitnessPolicy.k_of_n(3, witnesses))
    assert "The proof did not verify: [witnesses] witness quorum not met: needs 3 of w1, w2, w3" in short


async def test_the_api_serves_the_policy_the_pages_require(tmp_path: Path) -> None:
    """GET /api/v1/log/witness-policy: what `meterchain verify --policy` takes; 404 without one."""
    scenario = await build(tmp_path)
    log_key = scenario.log_key
    assert isinstance(log_key, NoteSigner)
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key, f"http://w{i}.example")
                                      for i, c in enumerate(WITNESSES, 1)])
    app = create_app(str(scenario.db), "s3cret", log_key.verifier,
                     ProvisioningSettings(witness_policy=policy.to_text()))
    with TestClient(app) as http:
        answer = http.get("/api/v1/log/witness-policy")
        assert answer.status_code == 200 and parse_policy(answer.text) == policy
    with TestClient(create_app(str(scenario.db), "s3cret", log_key.verifier)) as http:
        answer = http.get("/api/v1/log/witness-policy")
        assert answer.status_code == 404 and answer.json()["error"] == "no-witness-policy"
