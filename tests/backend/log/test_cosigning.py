"""The sealer collects witness cosignatures after each seal (backend/log/cosigning.py): three
witnesses (the real witness app and store, in process), a 2-of-3 policy, bundles verified with
it; witnesses that are down or refuse cost their cosignature, never the seal."""

from __future__ import annotations

from pathlib import Path

import pytest
from meterchain.backend.log.audit import audit
from meterchain.backend.log.cosigning import Cosigning
from meterchain.backend.log.proofs import build_bundle
from meterchain.cli.main import app as cli
from meterchain.contract.bundle import BundleError, verify_bundle
from meterchain.contract.cosignature import Cosigner, verify_cosignatures
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from typer.testing import CliRunner

from tests.support.backend import Gateway, backend, close
from tests.support.store import StoreFactory
from tests.support.witness import Witnesses


async def test_checkpoints_carry_the_witnesses_cosignatures(store_factory: StoreFactory, tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    admin, ingest, sealer, api = await backend(store_factory, gw)
    witnesses = Witnesses(tmp_path, sealer.signer.verifier)
    policy = witnesses.policy(2)
    cosigning = Cosigning(policy, sealer.store, transport=witnesses.transport())
    sealer.on_sealed = cosigning.after_seal
    for start in (1, 4, 9):  # first contact (409 -> old 0 -> 200), then consistency proofs
        await ingest.process([gw.message(s) for s in range(start, start + 3)])
        await sealer.seal_all()
        note = (await api.latest_checkpoint()).note
        assert set(verify_cosignatures(note, policy.keys)) == {f"witness.test/w{i}" for i in (1, 2, 3)}
    verified = verify_bundle(await build_bundle(api, "gw-1", 2), sealer.signer.verifier, policy)
    assert verified.cosigners == ("w1", "w2", "w3")
    assert verified.passed[:3] == ["encoding", "checkpoint", "witnesses"]
    assert witnesses.stores["w2"].latest(sealer.signer.name).size == 10
    # meterchain verify --policy says who cosigned; 4 of 4 (one that never cosigned) fails.
    (tmp_path / "r.tlog-proof").write_text(await build_bundle(api, "gw-1", 2))
    (tmp_path / "policy").write_text(policy.to_text())
    args = ["verify", str(tmp_path / "r.tlog-proof"), "--log-key", str(sealer.signer.verifier),
            "--policy", str(tmp_path / "policy")]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "ok   witnesses" in done.output
    assert "witnesses: w1, w2, w3 cosigned (policy: 2 of w1, w2, w3)" in done.output
    strict = WitnessPolicy.k_of_n(4, [Witness(n, c.key) for n, c in witnesses.cosigners.items()]
                                  + [Witness("w4", Cosigner.generate("witness.test/w4").key)])
    (tmp_path / "policy").write_text(strict.to_text())
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 1 and "FAIL witnesses: witness quorum not met: needs 4 of" in done.output
    assert "ok   witnesses" not in done.output

    # One witness down: 2 of 3 still meet the quorum.
    witnesses.down.add("w3")
    await ingest.process([gw.message(s) for s in range(12, 14)])
    await sealer.seal_all()
    verified = verify_bundle(await build_bundle(api, "gw-1", 12), sealer.signer.verifier, policy)
    assert verified.cosigners == ("w1", "w2")

    # Two down: the seal stands, its checkpoint has one cosignature, the quorum check fails.
    witnesses.down.add("w2")
    await ingest.process([gw.message(14)])
    assert await sealer.seal_all() == 1
    with pytest.raises(BundleError) as failed:
        verify_bundle(await build_bundle(api, "gw-1", 14), sealer.signer.verifier, policy)
    assert failed.value.check == "witnesses"
    assert "needs 2 of w1, w2, w3, cosigned by w1" in str(failed.value)
    # ... and without a policy it verifies as before (the log key alone).
    verify_bundle(await build_bundle(api, "gw-1", 14), sealer.signer.verifier)
    # A witness that just failed is not asked again at once (a black-holed one would add the
    # timeout to every seal of a backlog): it backs off 1, 2, 4, ... s, at most 60.
    row = await api.latest_checkpoint()
    again = await cosigning.after_seal(row.size, row.note)
    assert again.failed["w2"].startswith("backing off after 1 failures")
    assert again.failed["w3"].startswith("backing off after")

    # They come back; a restarted backend (new client: it knows no sizes) offers the newest
    # checkpoint again and the two catch up with a consistency proof.
    witnesses.down.clear()
    restarted = Cosigning(policy, sealer.store, transport=witnesses.transport())
    await restarted.resume()
    note = (await api.latest_checkpoint()).note
    assert set(verify_cosignatures(note, policy.keys)) == {f"witness.test/w{i}" for i in (1, 2, 3)}
    assert note.count("\u2014 witness.test/w1 ") == 1  # kept, not asked again
    # The audit takes cosigned notes as they are: the log's signature verifies, the rest is ignored.
    assert (await audit(api, sealer.signer.verifier)).ok
    await cosigning.close()
    await restarted.close()
    await close(admin, ingest, sealer, api)


def test_gateways_get_the_policy_at_provisioning(tmp_path: Path) -> None:
    from meterchain.backend.config import BackendConfig
    from meterchain.backend.provisioning.tokens import settings_from_config
    from meterchain.contract.tlog_policy import parse_policy

    assert settings_from_config(BackendConfig(log_key=str(tmp_path / "log.key"))).witness_policy is None
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", Cosigner.generate(f"witness.test/w{i}").key, f"http://w{i}")
                                      for i in (1, 2, 3)])
    (tmp_path / "witnesses.policy").write_text("# ours\n" + policy.to_text())
    settings = settings_from_config(BackendConfig(log_key=str(tmp_path / "log.key"),
                                                  witness_policy=str(tmp_path / "witnesses.policy")))
    assert settings.witness_policy is not None
    assert parse_policy(settings.witness_policy) == policy
