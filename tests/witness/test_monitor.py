"""``meterchain monitor``: it follows a log's checkpoints and tiles and alerts, naming the check,
on a bad signature, a quorum short of k, a rollback, a fork at an equal size, a larger tree
that does not extend the last one, and tampered tiles; against a toy log served from memory and
against the real backend's routes, with the witnesses' cosignatures the sealer collected."""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import httpx
import pytest
from meterchain.backend.api.app import create_app
from meterchain.contract.cosignature import Cosigner, add_signatures
from meterchain.contract.note import NoteSigner, split_note
from meterchain.contract.tlog_policy import Witness, WitnessPolicy
from meterchain.witness.monitor import Monitor, MonitorAlert, TreeEdge, alert, tile_path

from tests.support.backend import Gateway, backend, close
from tests.support.witness import ToyLog

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WITNESSES = [Cosigner.generate(f"witness.test/w{i}") for i in (1, 2, 3)]
POLICY = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key) for i, c in enumerate(WITNESSES, 1)])


class Served:
    """A log as its HTTP routes show it: ``note`` and ``leaves`` may be changed between polls."""

    def __init__(self, toy: ToyLog, cosigners: list[Cosigner]) -> None:
        self.toy, self.cosigners = toy, cosigners
        self.leaves = list(toy.leaves)
        self.note = self.cosigned(toy)
        self.witness_notes: dict[str, str] = {}  # host -> the checkpoint that witness serves

    def cosigned(self, toy: ToyLog, size: int | None = None) -> str:
        note = toy.checkpoint(size)
        text = split_note(note)[0]
        return add_signatures(note, [c.cosign(text, 1_780_000_000) for c in self.cosigners])

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        if request.url.host != "log.test":
            note = self.witness_notes.get(request.url.host)
            return httpx.Response(200, text=note) if note and path.endswith("/checkpoint") else httpx.Response(404)
        if path == "api/v1/proofs/consistency":
            old, new = int(request.url.params["old"]), int(request.url.params["new"])
            proof = ToyLog(self.toy.signer, self.leaves).proof(old, new)
            return httpx.Response(200, json={"old": old, "new": new,
                                             "proof": [base64.b64encode(h).decode() for h in proof]})
        if path == "checkpoint":
            return httpx.Response(200, text=self.note)
        for index in range(len(self.leaves) // 256 + 1):
            for width in range(1, 257):
                if tile_path(index, width) == path:
                    return httpx.Response(200, content=b"".join(self.leaves[index * 256: index * 256 + width]))
        return httpx.Response(404)

    def monitor(self, policy: WitnessPolicy = POLICY, **kwargs: object) -> Monitor:
        return Monitor("http://log.test", self.toy.signer.verifier, policy,
                       http=httpx.Client(transport=httpx.MockTransport(self.handler)), **kwargs)  # type: ignore[arg-type]


def test_tile_paths_and_tree_edge() -> None:
    assert tile_path(1234067, 256) == "tile/0/x001/x234/067"
    assert tile_path(0, 5) == "tile/0/000.p/5"
    toy = ToyLog()
    edge = TreeEdge()
    for _ in range(1, 40):
        toy.append(1)
        edge.append(toy.leaves[-1])
        assert edge.root() == toy.root()


def test_follows_growth_and_resumes_from_its_state(tmp_path: Path) -> None:
    toy = ToyLog()
    toy.append(300)
    served = Served(toy, WITNESSES[:2])
    watcher = served.monitor(state=tmp_path / "state.json")
    assert watcher.poll().size == 300
    toy.append(500)
    served.leaves, served.note = list(toy.leaves), served.cosigned(toy)
    assert served.monitor(state=tmp_path / "state.json").poll().size == 800  # from the state file
    assert watcher.poll().size == 800


def test_each_failure_is_named(tmp_path: Path) -> None:
    toy = ToyLog()
    toy.append(20)
    served = Served(toy, WITNESSES[:2])
    watcher = served.monitor()
    watcher.poll()

    def fails(check: str) -> MonitorAlert:
        with pytest.raises(MonitorAlert) as failed:
            watcher.poll()
        assert failed.value.check == check, failed.value
        return failed.value

    good = served.note
    served.note = Served(ToyLog(NoteSigner.generate(toy.signer.name), list(toy.leaves)), WITNESSES).note
    fails("checkpoint")
    served.note = Served(toy, WITNESSES[:1]).note  # one cosignature, 2 of 3 needed
    assert "needs 2 of w1, w2, w3" in str(fails("witnesses"))
    served.note = served.cosigned(toy, 15)
    assert "rolled back from size 20 to 15" in str(fails("rollback"))
    fork = toy.fork()
    fork.leaves[19] = b"\x05" * 32
    served.note = served.cosigned(fork)
    fails("consistency")
    fork.append(10)  # larger, but not an extension of what was seen
    served.leaves, served.note = list(fork.leaves), served.cosigned(fork)
    assert "not an extension of size 20" in str(fails("tiles"))
    toy.append(10)  # an honest extension whose served tiles were tampered with
    served.leaves, served.note = list(toy.leaves), served.cosigned(toy)
    served.leaves[25] = b"\x06" * 32
    fails("tiles")
    served.leaves = list(toy.leaves)
    assert watcher.poll().size == 30
    assert good  # the honest note verified before any of this


# tlog-witness, monitor retrieval: "it must not be possible to partition clients from monitors,
# either by splitting the tree or by serving a stale view to monitors."
def test_split_view_between_the_witnesses_and_the_monitor() -> None:
    toy = ToyLog()
    toy.append(20)
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key, f"http://w{i}.test") for i, c in enumerate(WITNESSES, 1)])
    served = Served(toy, WITNESSES)
    served.witness_notes["w1.test"] = served.cosigned(toy, 12)  # behind, same history: fine
    watcher = served.monitor(policy)
    assert watcher.poll().size == 20
    fork = toy.fork()
    fork.leaves[19] = b"\x05" * 32
    served.witness_notes["w2.test"] = served.cosigned(fork)  # the witnesses were shown another tree
    with pytest.raises(MonitorAlert) as failed:
        served.monitor(policy).poll()
    assert failed.value.check == "split-view" and "two different roots of one size" in str(failed.value)
    older = toy.fork()
    older.leaves[3] = b"\x06" * 32
    served.witness_notes["w2.test"] = served.cosigned(older, 12)  # an inconsistent smaller tree
    with pytest.raises(MonitorAlert, match="not consistent"):
        served.monitor(policy).poll()
    ahead = toy.fork()
    ahead.append(5)
    served.witness_notes["w2.test"] = served.cosigned(ahead)  # the monitor is shown a stale tree
    with pytest.raises(MonitorAlert, match="older tree than it showed the witness"):
        served.monitor(policy).poll()


def test_alert_posts_the_webhook() -> None:
    posted: list[tuple[str, dict[str, object]]] = []
    alert(MonitorAlert("two roots", check="consistency", size=5), "http://log.test", "http://hook",
          post=lambda url, body: posted.append((url, body)))
    assert posted == [("http://hook", {"log": "http://log.test", "check": "consistency", "message": "two roots",
                                       "context": {"size": "5"}})]


async def test_monitor_follows_the_real_backend(tmp_path: Path) -> None:
    gateways = [Gateway(f"gw-{i}") for i in range(2)]
    admin, ingest, sealer, store = await backend(tmp_path, *gateways, max_leaves=300)
    with TestClient(create_app(str(tmp_path / "mc.db"), "s3cret", sealer.signer.verifier)) as http:
        watcher = Monitor("http://testserver", sealer.signer.verifier, http=http)
        for start in (1, 200):  # 2 enrolments + 2 x 199 readings, then 2 x 201: partial and full tiles
            await ingest.process([g.message(s) for g in gateways for s in range(start, start + 199 + start // 200 * 2)])
            await sealer.seal_all()
            assert watcher.poll().size == (await store.latest_checkpoint()).size
        assert watcher.seen.edge.size == 2 + 2 * 400
    await close(admin, ingest, sealer, store)
