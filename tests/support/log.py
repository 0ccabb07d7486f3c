"""Shared by several test modules (moved here from test_log_tiles_api.py, so no test imports another)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient


def root(hashes: list[bytes]) -> bytes:
    """RFC 9162 MTH over leaf hashes: split at the largest power of two below n."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return h(b"\x01" + root(hashes[:k]) + root(hashes[k:]))


def open_checkpoint(note: str, vkey: str) -> tuple[str, int, bytes]:
    """signed-note + tlog-checkpoint: verify the Ed25519 line of our key; origin, size, root."""
    name, key_hash, key_b64 = vkey.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 0x01
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    verified = False
    for line in signatures.splitlines():
        signer, blob = line.removeprefix("\u2014 ").split(" ")
        raw = base64.b64decode(blob)
        if signer == name and raw[:4].hex() == key_hash:
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(raw[4:], text.encode())
            verified = True
    assert verified, "no signature by the log key"
    origin, size, root = text.splitlines()[:3]
    return origin, int(size), base64.b64decode(root)


def fetch_level(http: TestClient, level: int, size: int) -> list[bytes]:
    """All hashes at tree height 8·level of a tree of ``size`` leaves, from its tiles."""
    count = size >> (8 * level)
    data = b""
    for index in range((count + 255) // 256):
        width = min(256, count - 256 * index)
        answer = http.get("/" + tile_path(level, index, width))
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == IMMUTABLE
        assert len(answer.content) == 32 * width
        data += answer.content
    return [data[i : i + 32] for i in range(0, len(data), 32)]


IMMUTABLE = "public, max-age=31536000, immutable"


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def tile_path(level: int, index: int, width: int) -> str:
    digits = []
    while True:
        digits.append(f"{index % 1000:03d}")
        index //= 1000
        if not index:
            break
    groups = "/".join(["x" + g for g in reversed(digits[1:])] + [digits[0]])
    return f"tile/{level}/{groups}" + ("" if width == 256 else f".p/{width}")
