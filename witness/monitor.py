"""``meterchain monitor URL``: follow a log's checkpoints and tiles, and alert on any failure.

Runnable by any community member with the log's public key (and the witness policy, if the log
is witnessed). Each poll fetches ``/checkpoint`` and checks, in order, with the check named in
the alert: ``checkpoint`` (the log key signed it), ``witnesses`` (the policy's quorum cosigned
it), ``rollback`` (its size is not below the last one seen), ``consistency`` (an equal size has
the equal root), ``tiles`` (the level-0 tiles from the last size to the new one, appended to
the tree rebuilt so far, give the checkpoint's root: the new tree extends the old one, leaf by
leaf) and, for each policy witness with a URL, ``split-view``: the checkpoint the witness last
cosigned (tlog-witness monitoring, ``GET <url>/<sha256 of the origin>/checkpoint``) is the one
the monitor sees or consistent with it (the log's consistency proof), so the log cannot show the
witnesses one history and the monitor another. The tree is kept as its compact range (O(log n)
hashes), with the last checkpoint, in a state file so a restarted monitor goes on from there. A
failure is a log line, the metric ``meterchain_monitor_failures`` (and ``meterchain_monitor_ok``
0), an optional webhook POST (JSON) and exit status 1: a log caught misbehaving is not followed
further.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from meterchain.contract.checkpoint import Checkpoint, open_checkpoint
from meterchain.contract.cosignature import verify_cosignatures
from meterchain.contract.errors import MeterchainError
from meterchain.contract.merkle import HASH_SIZE, node_hash, root_from_peaks, verify_consistency
from meterchain.contract.note import NoteVerifier
from meterchain.contract.policy import Evidence, WitnessQuorum
from meterchain.contract.tlog_policy import WitnessPolicy

log = logging.getLogger("meterchain.monitor")

TILE_WIDTH = 256
STATE_VERSION = 1


class MonitorAlert(MeterchainError):
    """The log failed a check (``check`` names it): it is not to be trusted from here on."""

    check = "monitor"


def tile_path(index: int, width: int) -> str:
    """The level-0 tile (leaf hashes) ``index``, partial at ``width`` < 256 (C2SP tlog-tiles)."""
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    path = "tile/0/" + "/".join(reversed(groups))
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


@dataclass
class TreeEdge:
    """A tree's compact range: the perfect subtrees of its size's set bits, largest first."""

    size: int = 0
    peaks: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        self.peaks.append(leaf)
        self.size += 1
        merged, size = self.peaks, self.size
        while size % 2 == 0:  # each trailing zero bit: two equal subtrees become one
            right = merged.pop()
            merged[-1] = node_hash(merged[-1], right)
            size //= 2

    def root(self) -> bytes:
        return root_from_peaks(self.peaks)


@dataclass
class Seen:
    """The last checkpoint that passed, and the tree rebuilt up to it."""

    checkpoint: Checkpoint | None = None
    edge: TreeEdge = field(default_factory=TreeEdge)

    def to_json(self) -> str:
        cp = self.checkpoint
        return json.dumps({
            "v": STATE_VERSION,
            "checkpoint": None if cp is None else {"origin": cp.origin, "size": cp.size,
                                                   "root": base64.b64encode(cp.root).decode()},
            "edge": {"size": self.edge.size, "peaks": [base64.b64encode(p).decode() for p in self.edge.peaks]},
        })

    @classmethod
    def from_json(cls, text: str) -> Seen:
        doc = json.loads(text)
        if doc.get("v") != STATE_VERSION:
            raise ValueError(f"monitor state version {doc.get('v')!r} is not {STATE_VERSION}")
        cp = doc["checkpoint"]
        edge = TreeEdge(doc["edge"]["size"], [base64.b64decode(p) for p in doc["edge"]["peaks"]])
        checkpoint = None if cp is None else Checkpoint(cp["origin"], cp["size"], base64.b64decode(cp["root"]))
        return cls(checkpoint, edge)


class Monitor:
    """Polls one log; :meth:`poll` returns the new checkpoint or raises :class:`MonitorAlert`."""

    def __init__(self, url: str, log_key: NoteVerifier, policy: WitnessPolicy | None = None, *,
                 http: httpx.Client | None = None, state: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.log_key = log_key
        self.quorum = WitnessQuorum(policy) if policy is not None else None
        self.policy = policy
        self.http = http or httpx.Client(timeout=30.0)
        self.state_path = state
        self.seen = Seen.from_json(state.read_text()) if state is not None and state.exists() else Seen()

    def _get(self, path: str) -> httpx.Response:
        try:
            answer = self.http.get(f"{self.url}/{path}")
        except httpx.HTTPError as exc:
            raise MonitorAlert(f"cannot fetch {path}: {type(exc).__name__}: {exc}", check="fetch") from None
        if answer.status_code != 200:
            raise MonitorAlert(f"{path}: HTTP {answer.status_code}", check="fetch", status=answer.status_code)
        return answer

    def poll(self) -> Checkpoint:
        note = self._get("checkpoint").text
        try:
            checkpoint = open_checkpoint(note, self.log_key)
        except MeterchainError as exc:
            raise MonitorAlert(f"checkpoint does not verify with the log key: {exc}", check="checkpoint") from None
        if self.quorum is not None:
            evidence = Evidence(checkpoint_note=note, checkpoint=checkpoint)
            try:
                self.quorum.verify(evidence)
            except MeterchainError as exc:
                raise MonitorAlert(f"checkpoint {checkpoint.size}: {exc}", check="witnesses") from None
        last = self.seen.checkpoint
        if last is not None:
            if checkpoint.size < last.size:
                raise MonitorAlert(f"the log rolled back from size {last.size} to {checkpoint.size}",
                                   check="rollback", last=last.size, size=checkpoint.size)
            if checkpoint.size == last.size:
                if checkpoint.root != last.root:
                    raise MonitorAlert(f"two checkpoints of size {last.size} with different roots (a fork)",
                                       check="consistency", size=last.size)
                self.compare_witnesses(checkpoint)
                return checkpoint
        edge = TreeEdge(self.seen.edge.size, list(self.seen.edge.peaks))
        while edge.size < checkpoint.size:
            index = edge.size // TILE_WIDTH
            width = min(TILE_WIDTH, checkpoint.size - index * TILE_WIDTH)
            data = self._get(tile_path(index, width)).content
            if len(data) != width * HASH_SIZE:
                raise MonitorAlert(f"tile {tile_path(index, width)} is {len(data)} bytes, not {width * HASH_SIZE}",
                                   check="tiles")
            for offset in range(edge.size - index * TILE_WIDTH, width):
                edge.append(data[offset * HASH_SIZE:(offset + 1) * HASH_SIZE])
        if edge.root() != checkpoint.root:
            raise MonitorAlert(
                f"the tiles do not rebuild checkpoint {checkpoint.size}'s root"
                + (f": the log is not an extension of size {last.size}" if last else ""),
                check="tiles", size=checkpoint.size)
        self.seen = Seen(checkpoint, edge)
        self.compare_witnesses(checkpoint)
        if self.state_path is not None:
            tmp = self.state_path.with_name(self.state_path.name + ".tmp")
            tmp.write_text(self.seen.to_json())
            os.replace(tmp, self.state_path)
        return checkpoint


    def compare_witnesses(self, checkpoint: Checkpoint) -> None:
        """Each policy witness's latest cosigned checkpoint agrees with ``checkpoint``."""
        if self.policy is None:
            return
        origin_hash = hashlib.sha256(checkpoint.origin.encode()).hexdigest()
        for witness in self.policy.witnesses.values():
            if not witness.url:
                continue
            try:
                answer = self.http.get(f"{witness.url.rstrip('/')}/{origin_hash}/checkpoint")
            except httpx.HTTPError as exc:
                log.warning("monitor: witness %s unreachable: %s", witness.name, exc)
                continue
            if answer.status_code != 200:
                continue  # 404: it never cosigned this log
            try:
                theirs = open_checkpoint(answer.text, self.log_key)
                if witness.key.name not in verify_cosignatures(answer.text, [witness.key]):
                    raise MonitorAlert("no cosignature of its own", check="fetch")
            except MeterchainError as exc:
                log.warning("monitor: witness %s serves no valid checkpoint: %s", witness.name, exc)
                continue
            self._agrees(witness.name, theirs, checkpoint)

    def _agrees(self, name: str, theirs: Checkpoint, ours: Checkpoint) -> None:
        def split(message: str) -> MonitorAlert:
            return MonitorAlert(f"witness {name} cosigned size {theirs.size}, the log shows size {ours.size}: "
                                f"{message}", check="split-view", witness=name, size=theirs.size)

        if theirs.size > ours.size:
            # The log may have sealed since this poll fetched /checkpoint: ask it again.
            try:
                newer = open_checkpoint(self._get("checkpoint").text, self.log_key)
            except MeterchainError:
                newer = ours
            if newer.size < theirs.size:
                raise split("the log shows this monitor an older tree than it showed the witness")
            return  # the next poll checks the newer checkpoint, and this witness against it
        if theirs.size == ours.size:
            if theirs.root != ours.root:
                raise split("two different roots of one size (a split view)")
            return
        if theirs.size == 0:
            return
        answer = self._get(f"api/v1/proofs/consistency?old={theirs.size}&new={ours.size}")
        try:
            proof = [base64.b64decode(h, validate=True) for h in answer.json()["proof"]]
            verify_consistency(theirs.size, ours.size, theirs.root, ours.root, proof)
        except (ValueError, KeyError, TypeError, MeterchainError) as exc:
            raise split(f"not consistent ({exc})") from None


def alert(failure: MonitorAlert, url: str, webhook: str | None,
          post: Callable[[str, dict[str, object]], object] | None = None) -> None:
    """Say it: a log line, and the webhook (JSON: log, check, message, context) if given."""
    log.error("monitor %s: [%s] %s", url, failure.check, failure)
    if webhook:
        body: dict[str, object] = {"log": url, "check": failure.check, "message": str(failure),
                                   "context": {k: str(v) for k, v in failure.context.items()}}
        try:
            (post or (lambda u, b: httpx.post(u, json=b, timeout=10.0)))(webhook, body)
        except httpx.HTTPError as exc:
            log.error("monitor: webhook %s failed: %s", webhook, exc)
