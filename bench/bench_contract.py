"""Readings encoded, signed and verified per second, and leaves hashed per second, each beside
the bare library call in the same run.

    .venv/bin/python bench/bench_contract.py [--n 5000]

Ratios, not absolute times, are what to compare across machines (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from meterchain.contract import merkle, signing
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.policy import verify_reading
from meterchain.contract.reading import EXPORT_OBIS, IMPORT_OBIS, Reading, Register


def rate(fn: Callable[[int], object], n: int, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return n / best


def sample_readings(kid: bytes, n: int) -> list[Reading]:
    """``n`` consecutive quarter-hour readings of one meter (the same inputs for every bench)."""
    return [
        Reading(
            device="gw-0001", key_id=kid, seq=i + 1, meter="SDM630-1",
            start=1_767_225_600 + 900 * i, end=1_767_226_500 + 900 * i,
            registers={IMPORT_OBIS: Register(1_000_000 + i, "Wh"), EXPORT_OBIS: Register(i, "Wh")},
        )
        for i in range(n)
    ]


def print_ratios(rows: list[tuple[str, float, str | None]]) -> None:
    """Each row's rate, and its ratio to the ``bare …`` row of the same kind."""
    base = {kind: r for name, r, kind in rows if name.startswith("bare") and kind}
    print(f"{'operation':50} {'per second':>12} {'vs bare':>8}")
    for name, r, kind in rows:
        ratio = "" if kind is None or name.startswith("bare") else f"{r / base[kind]:.2f}"
        print(f"{name:50} {r:12,.0f} {ratio:>8}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n

    pem = signing.generate_private_key_pem()
    signer = signing.CryptographySigner(pem)
    fallback = signing.EcdsaSigner(pem)
    kid = signing.key_id(signer.public_key_der)

    readings = sample_readings(kid, n)
    encoded = [r.to_cbor() for r in readings]
    messages = [sign_reading(r, signer) for r in readings]
    message_bytes = [m.to_cbor() for m in messages]
    raw_key = ec.generate_private_key(ec.SECP256R1())
    raw_sigs = [raw_key.sign(b, ec.ECDSA(hashes.SHA256())) for b in encoded]
    raw_pub = raw_key.public_key()
    spki = signer.public_key_der

    rows = [
        ("encode reading (Reading.to_cbor)", rate(lambda i: readings[i].to_cbor(), n), None),
        ("decode + validate reading (Reading.from_cbor)", rate(lambda i: Reading.from_cbor(encoded[i]), n), None),
        (
            "bare cryptography ECDSA sign",
            rate(lambda i: raw_key.sign(encoded[i], ec.ECDSA(hashes.SHA256())), n),
            "sign",
        ),
        ("sign_reading (encode + sign + low-S)", rate(lambda i: sign_reading(readings[i], signer), n), "sign"),
        (
            "bare cryptography ECDSA verify",
            rate(lambda i: raw_pub.verify(raw_sigs[i], encoded[i], ec.ECDSA(hashes.SHA256())), n),
            "verify",
        ),
        (
            "parse_message + verify (full ingest check)",
            rate(lambda i: verify_reading(parse_message(message_bytes[i]), spki), n),
            "verify",
        ),
        ("ecdsa fallback sign (pure Python)", rate(lambda i: fallback.sign(encoded[i]), max(n // 10, 50), 1), "sign"),
        (
            "bare hashlib.sha256(0x00 + message)",
            rate(lambda i: hashlib.sha256(b"\x00" + message_bytes[i]).digest(), n),
            "hash",
        ),
        ("merkle.leaf_hash(message)", rate(lambda i: merkle.leaf_hash(message_bytes[i]), n), "hash"),
    ]
    print_ratios(rows)


if __name__ == "__main__":
    main()
