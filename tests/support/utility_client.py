"""An independent verifier of utility batches, written from docs/utility-guide.md and
docs/format.md alone: it imports nothing of meterchain (only hashlib, base64, cbor2 and
cryptography), so it checks the documents, not our own code against itself."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


class Invalid(Exception):
    pass


@dataclass(frozen=True)
class Verified:
    size_from: int
    size_to: int
    readings: list[tuple[int, str, int, dict[str, Any]]]  # (index, device, seq, reading map)
    points: list[str | None]  # each reading's proven metering point


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def open_checkpoint(note: str, log_key: str) -> tuple[int, bytes]:
    """format.md §7: verify the signed note with the log key; return (size, root)."""
    name, key_hash_hex, key_b64 = log_key.strip().split("+", 2)
    raw = _b64(key_b64)
    if raw[0] != 0x01 or len(raw) != 33:
        raise Invalid("not an Ed25519 note key")
    public = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise Invalid("no signature block")
    text = body + "\n"
    lines = text.split("\n")
    origin, size, root = lines[0], int(lines[1]), _b64(lines[2])
    if origin != name or len(root) != 32:
        raise Invalid("checkpoint of another log")
    for line in signatures.splitlines():
        prefix = "\u2014 " + name + " "
        if not line.startswith(prefix):
            continue
        blob = _b64(line[len(prefix):])
        if blob[:4].hex() != key_hash_hex:
            continue
        try:
            public.verify(blob[4:], text.encode())
        except InvalidSignature:
            raise Invalid("checkpoint signature does not verify") from None
        return size, root
    raise Invalid("no signature by the log key")


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_root(index: int, size: int, leaf_hash: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2."""
    if not 0 <= index < size:
        raise Invalid("index outside the tree")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise Invalid("proof too long")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Invalid("proof too short")
    return r


def check_consistency(n1: int, n2: int, root1: bytes, root2: bytes, proof: list[bytes]) -> None:
    """RFC 9162 §2.1.4.2."""
    if n1 == n2:
        if proof or root1 != root2:
            raise Invalid("equal sizes need an empty proof and equal roots")
        return
    if not 0 < n1 < n2 or not proof:
        raise Invalid("bad consistency sizes")
    if n1 & (n1 - 1) == 0:  # a power of two: the old root is the first node
        proof = [root1, *proof]
    fn, sn = n1 - 1, n2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise Invalid("consistency proof too long")
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise Invalid("consistency proof does not verify")


def _valid_key(leaves: list[dict[str, Any]], device: str, seq: int) -> bytes | None:
    """format.md §5 key validity: the latest leaf (log order) with from <= seq decides."""
    best = None
    for leaf in leaves:
        if leaf["dev"] == device and leaf["from"] <= seq and (best is None or leaf["from"] >= best["from"]):
            best = leaf
    if best is None or best["event"] == "revoke":
        return None
    return best["key"]


def verify_batch(doc: dict[str, Any], log_key: str, *, binary: bool) -> Verified:
    """Check a utility batch page (JSON with base64, or CBOR with byte strings)."""
    raw = (lambda v: v) if binary else _b64
    if doc["t"] != "meterchain/utility-batch/v2":
        raise Invalid("not a utility batch")
    size_to, root_to = open_checkpoint(doc["new"], log_key)
    if size_to != doc["to"]:
        raise Invalid("checkpoint `new` is not of size `to`")
    if doc["from"]:
        size_from, root_from = open_checkpoint(doc["old"], log_key)
        if size_from != doc["from"]:
            raise Invalid("checkpoint `old` is not of size `from`")
        check_consistency(size_from, size_to, root_from, root_to, [raw(h) for h in doc["consistency"]])
    leaves = []
    for key in sorted(doc["keys"], key=lambda k: k["index"]):
        data = raw(key["leaf"])
        if inclusion_root(key["index"], size_to, _leaf(data), [raw(h) for h in key["proof"]]) != root_to:
            raise Invalid("device leaf not included")
        leaf = cbor2.loads(data)
        if leaf["t"] != "meterchain/device/v1" or hashlib.sha256(leaf["key"]).digest() != leaf["kid"]:
            raise Invalid("bad device leaf")
        leaves.append(leaf)
    bindings: dict[tuple[Any, ...], dict[str, Any]] = {}  # format.md §5.1: the latest leaf decides
    for item in sorted(doc["assignments"], key=lambda a: a["index"]):
        salt, fields = raw(item["salt"]), raw(item["fields"])
        if len(salt) != 32:
            raise Invalid("an assignment salt is 32 bytes")
        leaf = cbor2.dumps({"t": "meterchain/assignment/v1",
                            "commit": hashlib.sha256(salt + fields).digest()}, canonical=True)
        if inclusion_root(item["index"], size_to, _leaf(leaf), [raw(h) for h in item["proof"]]) != root_to:
            raise Invalid("assignment leaf not included")
        opened = cbor2.loads(fields)
        if opened["t"] != "meterchain/assignment-fields/v1":
            raise Invalid("bad assignment fields")
        if opened["kind"] == "meter":
            bindings[(opened["point"], opened["dev"], opened["meter"], opened["from"])] = opened
    readings, points = [], []
    last = doc["cursor"] - 1
    for entry in doc["entries"]:
        index, message = entry["index"], raw(entry["message"])
        if not doc["from"] <= index < doc["to"] or index <= last:
            raise Invalid("entry outside the range or out of order")
        last = index
        if inclusion_root(index, size_to, _leaf(message), [raw(h) for h in entry["proof"]]) != root_to:
            raise Invalid(f"reading at {index} not included")
        reading_bytes, signature = cbor2.loads(message)
        reading = cbor2.loads(reading_bytes)
        if reading["t"] != "meterchain/reading/v1" or (reading["dev"], reading["seq"]) != (
                entry["device"], entry["seq"]):
            raise Invalid("entry names another reading")
        key_der = _valid_key(leaves, reading["dev"], reading["seq"])
        if key_der is None or hashlib.sha256(key_der).digest() != reading["kid"]:
            raise Invalid("no logged key valid for this reading")
        public = serialization.load_der_public_key(key_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        try:
            public.verify(signature, reading_bytes, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise Invalid("reading signature does not verify") from None
        if entry["point"] is not None:
            at = {b["point"] for b in bindings.values()
                  if (b["dev"], b["meter"]) == (reading["dev"], reading["meter"])
                  and b["from"] <= reading["end"] and (b["to"] is None or reading["end"] < b["to"])}
            if at != {entry["point"]}:
                raise Invalid(f"reading at {index} is bound to {sorted(at)}, not {entry['point']}")
        readings.append((index, reading["dev"], reading["seq"], reading))
        points.append(entry["point"])
    return Verified(doc["from"], doc["to"], readings, points)
