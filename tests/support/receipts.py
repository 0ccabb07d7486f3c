"""A log in memory that makes real receipts (contract/receipt.py) for the agent's tests: signed
readings of one gateway as leaves, checkpoints signed by the log key and cosigned by the chosen
witnesses of three, and the backend API's two routes a gateway asks (consistency proofs, the
newest checkpoint) as an httpx transport computing real proofs from the leaves."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import httpx
from meterchain.contract.checkpoint import Checkpoint
from meterchain.contract.cosignature import Cosigner, add_signatures
from meterchain.contract.merkle import consistency_proof, inclusion_proof, leaf_hash, root_from_leaf_hashes
from meterchain.contract.note import NoteSigner, split_note
from meterchain.contract.receipt import Receipt
from meterchain.contract.tlog_policy import Witness, WitnessPolicy

from tests.support.backend import Gateway

COSIGNERS = {n: Cosigner.generate(f"witness.test/{n}") for n in ("w1", "w2", "w3")}
POLICY_2_OF_3 = WitnessPolicy.k_of_n(2, [Witness(n, c.key) for n, c in COSIGNERS.items()])


@dataclass
class ReceiptLog:
    """One history of a log; :meth:`fork` gives another under the same key."""

    gateway: Gateway
    signer: NoteSigner = field(default_factory=lambda: NoteSigner.generate("test.example/log"))
    leaves: list[bytes] = field(default_factory=list)  # the entries (signed messages)
    seqs: dict[int, int] = field(default_factory=dict)  # seq -> leaf index
    served_size: int | None = None  # what /checkpoint says (None: every leaf)
    offline: bool = False
    requests: list[str] = field(default_factory=list)

    def append(self, *seqs: int, tag: int = 0) -> None:
        """Readings ``seqs`` of the gateway (``tag`` changes their values: another history)."""
        for seq in seqs:
            self.seqs[seq] = len(self.leaves)
            self.leaves.append(self.gateway.signed(seq, import_wh=1000 * seq + tag).to_cbor())

    def fork(self) -> ReceiptLog:
        return ReceiptLog(self.gateway, self.signer, list(self.leaves), dict(self.seqs))

    def hashes(self, size: int | None = None) -> list[bytes]:
        return [leaf_hash(x) for x in self.leaves[:size]]

    def note(self, size: int | None = None, witnesses: tuple[str, ...] = ("w1", "w2", "w3")) -> str:
        size = len(self.leaves) if size is None else size
        body = Checkpoint(self.signer.name, size, root_from_leaf_hashes(self.hashes(size)))
        note = body.sign(self.signer)
        text, _ = split_note(note)
        return add_signatures(note, [COSIGNERS[w].cosign(text, 1_700_000_000) for w in witnesses])

    def receipt(self, seq: int, *, size: int | None = None, witnesses: tuple[str, ...] = ("w1", "w2", "w3"),
                device: str | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        index = self.seqs[seq]
        proof = inclusion_proof(index, self.hashes(size))
        return Receipt(device or self.gateway.device, seq, self.leaves[index], index, tuple(proof),
                       self.note(size, witnesses)).to_cbor()

    def transport(self) -> httpx.MockTransport:
        """``/api/v1/proofs/consistency`` and ``/checkpoint`` over this history."""

        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(str(request.url))
            if self.offline:
                raise httpx.ConnectError("connection refused", request=request)
            size = len(self.leaves) if self.served_size is None else self.served_size
            if request.url.path == "/checkpoint":
                return httpx.Response(200, text=self.note(size, ()))
            old, new = int(request.url.params["old"]), int(request.url.params["new"])
            if not 1 <= old <= new <= size:
                return httpx.Response(400, json={"error": "bad-sizes", "detail": f"need new <= {size}"})
            proof = consistency_proof(old, self.hashes(new))
            return httpx.Response(200, content=json.dumps(
                {"old": old, "new": new, "proof": [base64.b64encode(h).decode() for h in proof]}))

        return httpx.MockTransport(handle)
