"""Three witness processes (``python -m meterchain.witness serve``) and a 2-of-3 policy against
a log that shows two histories: the witnesses refuse the second, it cannot reach the quorum,
and the witnesses' own checkpoints expose the split. And a witness SIGKILLed between its check
and its commit never cosigns two conflicting checkpoints (20 kill points; MC_LONG=1: 200)."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import CosignerKey, verify_cosignatures
from meterchain.contract.note import split_note
from meterchain.contract.policy import Evidence, VerificationError, checkpoint_policy
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.witness.store import WitnessStore

from tests.support.witness import ORIGIN, ToyLog, WitnessProcess

KILL_POINTS = 200 if os.environ.get("MC_LONG") == "1" else 20
# Each kill point is a witness process start (≈ 1-6 s on a loaded 2-core machine).
pytestmark = pytest.mark.timeout(KILL_POINTS * 20)


@pytest.fixture
def log() -> ToyLog:
    toy = ToyLog()
    toy.append(10)
    return toy


@pytest.fixture
def witnesses(tmp_path: Path, log: ToyLog):  # type: ignore[no-untyped-def]
    started = [WitnessProcess.create(tmp_path / f"w{i}", f"witness.test/w{i}", str(log.signer.verifier))
               for i in (1, 2, 3)]
    for witness in started:
        witness.start()
    yield started
    for witness in started:
        witness.stop()


def policy_of(witnesses: list[WitnessProcess], k: int = 2) -> WitnessPolicy:
    return WitnessPolicy.k_of_n(k, [Witness(w.name.rsplit("/", 1)[1], CosignerKey.parse(w.vkey), w.url)
                                    for w in witnesses])


def cosign(witnesses: list[WitnessProcess], body: bytes, note: str) -> tuple[str, list[int]]:
    answers = [w.post(body) for w in witnesses]
    lines = [a.text for a in answers if a.status_code == 200]
    return note + "".join(lines), [a.status_code for a in answers]


def test_split_view_is_refused_short_of_quorum_and_detected(witnesses, log) -> None:  # type: ignore[no-untyped-def]
    policy = policy_of(witnesses)
    checks = checkpoint_policy(log.signer.verifier, policy)
    note, statuses = cosign(witnesses, log.request(0), log.checkpoint())
    assert statuses == [200, 200, 200]
    checks.verify(Evidence(checkpoint_note=note))

    # The log forks at 10: history A (to w1, w2) and history B (to w3), both of size 15.
    fork_b = log.fork()
    log.append(5, b"A")
    fork_b.append(5, b"B")
    note_a, statuses = cosign(witnesses[:2], log.request(10), log.checkpoint())
    assert statuses == [200, 200]
    evidence = Evidence(checkpoint_note=note_a)
    checks.verify(evidence)
    assert evidence.cosigners == ("w1", "w2")

    # B is refused by those that saw A: same size, other root (422); from 10 they answer 409
    # with their size 15; only w3, which saw nothing else, cosigns it.
    same_size = fork_b.request(15, proof=[])
    assert [w.post(same_size).status_code for w in witnesses[:2]] == [422, 422]
    stale = [w.post(fork_b.request(10)) for w in witnesses[:2]]
    assert [(a.status_code, a.text, a.headers["content-type"]) for a in stale] == [
        (409, "15\n", "text/x.tlog.size")] * 2
    note_b, statuses = cosign(witnesses, fork_b.request(10), fork_b.checkpoint())
    assert statuses == [409, 409, 200]
    with pytest.raises(VerificationError) as short:
        checks.verify(Evidence(checkpoint_note=note_b))
    assert short.value.check == "witnesses"
    assert "needs 2 of w1, w2, w3, cosigned by w3" in str(short.value)

    # A larger checkpoint inconsistent with the past (B grown to 20) is refused too (422).
    fork_b.append(5, b"B2")
    assert [w.post(fork_b.request(15, proof=fork_b.proof(15))).status_code for w in witnesses[:2]] == [422, 422]

    # Detection: the witnesses' checkpoints (tlog-witness monitoring) disagree at size 15.
    roots = {Checkpoint.parse_body(split_note(w.checkpoint().text)[0]).root for w in witnesses}
    assert roots == {log.root(15), fork_b.root(15)}
    # and w1 kept B's validly signed checkpoints as evidence
    witnesses[0].stop()
    refused = WitnessStore(witnesses[0].directory / "witness.db").refused(ORIGIN)
    assert {(size, status) for _, size, _, status, _ in refused} >= {(15, 422), (20, 422)}


def _post(witness: WitnessProcess, body: bytes) -> httpx.Response | None:
    try:
        return witness.post(body, timeout=20.0)
    except httpx.TransportError:
        return None  # the witness died on this request (or before answering it)


def test_killed_between_check_and_commit_never_cosigns_conflicting_checkpoints(tmp_path: Path, log: ToyLog) -> None:
    rng = random.Random(17)
    witness = WitnessProcess.create(tmp_path / "w", "witness.test/w", str(log.signer.verifier))
    key = CosignerKey.parse(witness.vkey)
    chain = list(log.leaves)  # the history the witness has cosigned so far (its size: len(chain))
    cosigned: list[tuple[int, bytes]] = []  # every (size, root) any cosignature was returned for
    witness.start()
    assert witness.post(log.request(0)).status_code == 200
    cosigned.append((10, log.root()))
    witness.stop()
    kills = 0
    round_no = 0
    with ThreadPoolExecutor(2) as pool:
        while kills < KILL_POINTS:
            step = rng.choice(["checked", "checked", "written", "committed"])
            witness.start(env={"MC_WITNESS_CRASH_AT": f"{step}:{rng.randint(1, 2)}"})
            for _ in range(3):  # a few rounds per life; the crash point ends it
                round_no += 1
                base = ToyLog(log.signer, list(chain))
                forks = []
                for side in (b"A", b"B"):
                    fork = base.fork()
                    fork.append(rng.randint(1, 4), side + b"%d" % round_no)
                    forks.append(fork)
                bodies = [f.request(len(chain)) for f in forks]
                answers = list(pool.map(lambda b: _post(witness, b), bodies))
                for fork, answer in zip(forks, answers, strict=True):
                    if answer is not None and answer.status_code == 200:
                        assert verify_cosignatures(fork.checkpoint() + answer.text, [key])
                        cosigned.append((len(fork.leaves), fork.root()))
                if any(a is None for a in answers):
                    break
                winners = [f for f, a in zip(forks, answers, strict=True) if a.status_code == 200]
                assert len(winners) == 1, [a.status_code for a in answers]
                chain = list(winners[0].leaves)
            if witness.proc.poll() is None:
                witness.stop()  # lived through its rounds (a crash count above the requests made)
            else:
                assert witness.wait_dead() == -9
                kills += 1
            # What it holds now is the history: the fork it committed, if any, even unanswered.
            store = WitnessStore(witness.directory / "witness.db")
            held = store.latest(ORIGIN)
            store.close()
            assert held is not None
            candidates = [c for c in [base, *forks] if len(c.leaves) == held.size and c.root() == held.root]
            assert candidates, "the witness holds a checkpoint nobody sent"
            chain = list(candidates[0].leaves)
    # Never two conflicting cosignatures: every cosigned (size, root) is a prefix of one history.
    for size, root in cosigned:
        assert size <= len(chain)
        assert ToyLog(log.signer, chain).root(size) == root, f"conflicting cosignature at size {size}"
    assert kills >= KILL_POINTS
