"""OCMF records built, signed, parsed and verified per second, beside the bare library calls and
the signed reading they accompany, in the same run.

    .venv/bin/python bench/bench_ocmf.py [--n 5000]

Ratios, not absolute times, are what to compare across machines (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

from bench_contract import print_ratios, rate, sample_readings  # bench/ is the script's folder
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from meterchain.contract import signing
from meterchain.contract.message import parse_message, sign_reading
from meterchain.contract.ocmf import build_ocmf, parse_ocmf, sign_ocmf, verify_ocmf
from meterchain.contract.policy import verify_reading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    n = parser.parse_args().n

    signer = signing.CryptographySigner(signing.generate_private_key_pem())
    spki = signer.public_key_der
    kid = signing.key_id(spki)
    gateway = {"gateway_id": "meterchain agent", "gateway_version": "0.1.0"}
    readings = sample_readings(kid, n)
    payloads = [build_ocmf(r, **gateway) for r in readings]
    payload_bytes = [p.encode("ascii") for p in payloads]
    records = [sign_ocmf(p, signer) for p in payloads]
    messages = [sign_reading(r, signer).to_cbor() for r in readings]
    raw_key = ec.generate_private_key(ec.SECP256R1())
    raw_pub = raw_key.public_key()
    raw_sigs = [raw_key.sign(b, ec.ECDSA(hashes.SHA256())) for b in payload_bytes]

    rows = [
        ("build_ocmf (payload JSON)", rate(lambda i: build_ocmf(readings[i], **gateway), n), None),
        ("parse_ocmf (strict parse + re-encode check)", rate(lambda i: parse_ocmf(records[i]), n), None),
        (
            "bare cryptography ECDSA sign",
            rate(lambda i: raw_key.sign(payload_bytes[i], ec.ECDSA(hashes.SHA256())), n),
            "sign",
        ),
        ("sign_reading (the reading beside it)", rate(lambda i: sign_reading(readings[i], signer), n), "sign"),
        ("build_ocmf + sign_ocmf", rate(lambda i: sign_ocmf(build_ocmf(readings[i], **gateway), signer), n), "sign"),
        (
            "bare cryptography ECDSA verify",
            rate(lambda i: raw_pub.verify(raw_sigs[i], payload_bytes[i], ec.ECDSA(hashes.SHA256())), n),
            "verify",
        ),
        (
            "parse_message + verify (the reading)",
            rate(lambda i: verify_reading(parse_message(messages[i]), spki), n),
            "verify",
        ),
        ("verify_ocmf (parse + verify)", rate(lambda i: verify_ocmf(records[i], spki), n), "verify"),
    ]
    print_ratios(rows)


if __name__ == "__main__":
    main()
