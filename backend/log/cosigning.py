"""Collecting witness cosignatures after each seal (C2SP tlog-witness, the client side).

After the sealer commits a checkpoint it hands the note to :meth:`Cosigning.after_seal`, which
asks every witness of the policy that has a URL, in parallel, each bounded by ``timeout``:
``old <size the witness last cosigned>``, the consistency proof from there (from storage), the
note. A 409 names the witness's size (first contact sends 0, as the spec allows); the request is
then repeated once from that size. Each returned line is verified with the witness's key before
it is kept; the note with the log's signature and every verified cosignature replaces the stored
one (``LogStore.add_cosignatures``), so ``/checkpoint``, bundles and utility batches carry them.
A witness that is down, slow or refuses costs its cosignature, never the seal: the quorum is
the verifiers' business (contract/policy.py, ``witnesses``). On start the newest checkpoint is
offered again (``resume``), so a restart does not leave it without cosignatures.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from meterchain.backend.log.proofs import consistency_proof
from meterchain.backend.store import LogStore
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import add_signatures, verify_cosignatures
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import split_note
from meterchain.contract.tlog_policy import Witness, WitnessPolicy, parse_policy
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

COSIGNED = Counter("meterchain_witness_cosignatures", "Cosignatures collected", ["witness"])
FAILED = Counter("meterchain_witness_failures", "Witness requests without a cosignature", ["witness", "reason"])
QUORUM = Gauge("meterchain_witness_quorum_met", "1 if the newest checkpoint meets the witness policy")
LATENCY = Histogram("meterchain_witness_collect_seconds", "From a seal's commit to its stored cosignatures",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))


def load_policy(path: str) -> WitnessPolicy | None:
    """The tlog-policy file at ``path`` ("" = no witnesses)."""
    return parse_policy(Path(path).read_text(encoding="utf-8")) if path else None


#: After a failed request a witness is skipped for 2^failures seconds, at most this long, so a
#: black-holed one does not add ``timeout`` to every seal of a backlog.
MAX_BACKOFF = 60.0


@dataclass
class _Peer:
    witness: Witness
    url: str
    size: int | None = None  # what it last cosigned, as far as we know
    failures: int = 0
    retry_at: float = 0.0  # time.monotonic() before which it is not asked


@dataclass
class CollectResult:
    note: str
    cosigned: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Cosigning:
    """The log's side of tlog-witness for one policy."""

    def __init__(self, policy: WitnessPolicy, store: LogStore, *, timeout: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        self.store = store
        self.timeout = timeout
        self.peers = [_Peer(w, w.url.rstrip("/")) for w in policy.witnesses.values() if w.url]
        self.http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def close(self) -> None:
        await self.http.aclose()

    async def resume(self) -> None:
        """Offer the newest checkpoint again (after a restart its cosignatures may be missing)."""
        row = await self.store.latest_checkpoint()
        if row is not None:
            await self.after_seal(row.size, row.note)

    async def after_seal(self, size: int, note: str) -> CollectResult:
        """Ask every witness in parallel; store and return the note with what they cosigned."""
        started = time.perf_counter()
        text, _ = split_note(note)
        checkpoint = Checkpoint.parse_body(text)
        try:  # a note offered again (resume) keeps the cosignatures it has
            present = set(verify_cosignatures(note, self.policy.keys))
        except MeterchainError:
            present = set()
        now = time.monotonic()
        asking = [peer for peer in self.peers if peer.witness.key.name not in present and peer.retry_at <= now]
        resting = [p for p in self.peers if p.witness.key.name not in present and p.retry_at > now]
        results = await asyncio.gather(*(self._ask(peer, checkpoint, note) for peer in asking))
        result = CollectResult(note, [p.witness.name for p in self.peers if p.witness.key.name in present])
        for peer in resting:
            result.failed[peer.witness.name] = f"backing off after {peer.failures} failures"
        lines = []
        for peer, (line, reason) in zip(asking, results, strict=True):
            if line is None:
                result.failed[peer.witness.name] = reason
                FAILED.labels(peer.witness.name, reason.split(":")[0]).inc()
                peer.failures += 1
                peer.retry_at = time.monotonic() + min(MAX_BACKOFF, 2.0 ** (peer.failures - 1))
            else:
                peer.failures, peer.retry_at = 0, 0.0
                lines.append(line)
                result.cosigned.append(peer.witness.name)
                COSIGNED.labels(peer.witness.name).inc()
        if lines:
            result.note = add_signatures(note, lines)
            await self.store.add_cosignatures(size, result.note)
        met = self.policy.satisfied(p.witness.key.name for p in self.peers if p.witness.name in result.cosigned)
        QUORUM.set(1 if met else 0)
        LATENCY.observe(time.perf_counter() - started)
        if result.failed:
            log.warning("checkpoint %d: cosigned by %s; no cosignature from %s", size,
                        ", ".join(result.cosigned) or "none",
                        "; ".join(f"{name} ({why})" for name, why in result.failed.items()))
        return result

    async def _ask(self, peer: _Peer, checkpoint: Checkpoint, note: str) -> tuple[str | None, str]:
        try:
            return await asyncio.wait_for(self._exchange(peer, checkpoint, note), self.timeout)
        except TimeoutError:
            return None, f"timeout after {self.timeout} s"
        except httpx.HTTPError as exc:
            return None, f"unreachable: {type(exc).__name__}"
        except MeterchainError as exc:
            return None, f"bad answer: {exc}"

    async def _exchange(self, peer: _Peer, checkpoint: Checkpoint, note: str) -> tuple[str | None, str]:
        for _attempt in range(2):
            old = peer.size or 0
            if old > checkpoint.size:
                peer.size = None
                return None, (f"conflict: the witness has cosigned size {old}, larger than this log's "
                              f"{checkpoint.size}: a rolled-back log or another log under this origin")
            proof = await consistency_proof(self.store, old, checkpoint.size) if 0 < old < checkpoint.size else []
            body = "".join([f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n", note])
            answer = await self.http.post(f"{peer.url}/add-checkpoint", content=body.encode())
            if answer.status_code == 200:
                line = answer.text
                signed = verify_cosignatures(note + line, [peer.witness.key])
                if peer.witness.key.name not in signed:
                    return None, "bad answer: no cosignature by the witness's key"
                peer.size = checkpoint.size
                return line, ""
            if answer.status_code == 409 and answer.headers.get("content-type", "").startswith("text/x.tlog.size"):
                text = answer.text.strip()
                if not text.isdigit():
                    return None, "bad answer: a 409 without a size"
                peer.size = int(text)
                continue
            return None, f"refused: {answer.status_code} {answer.text.strip()[:200]}"
        return None, "refused: 409 twice"


def cosigning_from(policy_path: str, store: LogStore, *, timeout: float) -> Cosigning | None:
    """The sealer's cosigning for ``[backend] witness_policy`` (None without one)."""
    policy = load_policy(policy_path)
    if policy is None:
        return None
    cosigning = Cosigning(policy, store, timeout=timeout)
    if not cosigning.peers:
        log.warning("witness policy %s names no witness URL: nothing to ask, verifiers will "
                    "find no cosignatures", policy_path)
    return cosigning
