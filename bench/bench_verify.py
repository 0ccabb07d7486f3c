"""Verification speed (issues 17 and 20), each beside its bare cryptographic floor in the same run.

    .venv/bin/python bench/bench_verify.py [--n 2000] [--bundles 200] [--rounds 5] [--json]

1. The full per-message check, ``verify_reading(parse_message(m), key)`` (strict CBOR, every
   field bound, strict DER, low-S, key id, ECDSA), beside a bare ``cryptography`` ECDSA P-256
   verify of the same reading bytes with the same key: one thread, ``--n`` distinct messages,
   nothing cached between messages but the parsed public key (a backend's steady state).
2. Offline bundle verification (``verify_bundle``: tlog-proof parse, checkpoint note, device
   leaf inclusion, key validity, key id, low-S, signature, reading inclusion) of ``--bundles``
   distinct readings in a log of 4,096 leaves, with the log key only and with a 2-of-3 witness
   quorum (three cosignatures, each verified: signed-note says a known key's signature MUST be),
   beside the bare verifies it cannot avoid: 1 ECDSA + 1 Ed25519, and 1 ECDSA + 4 Ed25519.

Rounds are interleaved (ours, then the floor, ``--rounds`` times) and the best round of each
counts; times are CPU time of this process (``time.process_time``), which other sessions on a
shared machine disturb less than wall time; wall time is printed beside. The 1-minute load
average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_contract import sample_readings  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from meterchain.contract import merkle, signing  # noqa: E402
from meterchain.contract.bundle import Bundle, LoggedLeaf, verify_bundle  # noqa: E402
from meterchain.contract.checkpoint import Checkpoint  # noqa: E402
from meterchain.contract.cosignature import Cosigner, add_signatures  # noqa: E402
from meterchain.contract.leaves import DeviceEvent, DeviceLeaf  # noqa: E402
from meterchain.contract.message import parse_message, sign_reading  # noqa: E402
from meterchain.contract.note import NoteSigner, split_note  # noqa: E402
from meterchain.contract.policy import verify_reading  # noqa: E402
from meterchain.contract.tlog_policy import Witness, WitnessPolicy  # noqa: E402

LOG_SIZE = 4096


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def interleaved(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """Best (CPU, wall) seconds of each side over ``rounds`` interleaved rounds."""
    best = {name: (float("inf"), float("inf")) for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            cpu, wall = timed(fn)
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
    return best


def per_message(n: int, rounds: int) -> dict[str, float]:
    signer = signing.CryptographySigner(signing.generate_private_key_pem())
    spki = signer.public_key_der
    readings = sample_readings(signing.key_id(spki), n)
    messages = [sign_reading(r, signer).to_cbor() for r in readings]
    parsed = [parse_message(m) for m in messages]
    key = signing.load_public_key(spki)  # the bare side gets the parsed key too
    pairs = [(p.signature, p.reading_bytes) for p in parsed]

    def full() -> None:
        for m in messages:
            verify_reading(parse_message(m), spki)

    def bare() -> None:
        for sig, data in pairs:
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))

    best = interleaved({"full": full, "bare": bare}, rounds)
    return {
        "full_per_s": n / best["full"][0], "bare_per_s": n / best["bare"][0],
        "ratio": best["bare"][0] / best["full"][0],
        "full_per_s_wall": n / best["full"][1], "bare_per_s_wall": n / best["bare"][1],
        "ratio_wall": best["bare"][1] / best["full"][1],
    }


def gap(n: int, rounds: int) -> dict[str, float]:
    """Where the per-message check's time goes beyond the bare verify (µs CPU per message): the
    parse alone, and the bare verify with the parse, or only ``cbor2.loads``, run between verifies
    (the gap to the bare loop is larger than the parse itself costs)."""
    import cbor2

    signer = signing.CryptographySigner(signing.generate_private_key_pem())
    spki = signer.public_key_der
    messages = [sign_reading(r, signer).to_cbor() for r in sample_readings(signing.key_id(spki), n)]
    parsed = [parse_message(m) for m in messages]
    key = signing.load_public_key(spki)
    rows = list(zip(messages, [p.signature for p in parsed], [p.reading_bytes for p in parsed], strict=True))

    def loop(between: Callable[[bytes, bytes], object] | None) -> Callable[[], None]:
        def run() -> None:
            for message, sig, data in rows:
                if between is not None:
                    between(message, data)
                key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        return run

    def parse_only() -> None:
        for message in messages:
            parse_message(message)

    best = interleaved({
        "bare": loop(None), "parse_alone": parse_only,
        "bare_with_parse": loop(lambda m, d: parse_message(m)),
        "bare_with_loads": loop(lambda m, d: cbor2.loads(d)),
        "full": lambda: [verify_reading(parse_message(m), spki) for m in messages],
    }, rounds)
    return {name: 1e6 * cpu / n for name, (cpu, _) in best.items()}


def sample_log(count: int) -> tuple[list[str], NoteSigner, WitnessPolicy]:
    """``count`` bundles of distinct readings of one device in a 4,096-leaf log, whose checkpoint
    is cosigned by three witnesses; the log key and a 2-of-3 policy."""
    device = signing.CryptographySigner(signing.generate_private_key_pem())
    log_key = NoteSigner.generate("log.bench.example")
    leaves = [DeviceLeaf("gw-0001", DeviceEvent.ENROL, device.public_key_der, 1, 1_767_225_600).to_cbor()]
    leaves += [sign_reading(r, device).to_cbor()
               for r in sample_readings(signing.key_id(device.public_key_der), LOG_SIZE - 1)]
    hashes_ = [merkle.leaf_hash(leaf) for leaf in leaves]
    note = Checkpoint(log_key.name, len(leaves), merkle.root_from_leaf_hashes(hashes_)).sign(log_key)
    cosigners = [Cosigner.generate(f"witness.bench.example/w{i}") for i in (1, 2, 3)]
    text, _ = split_note(note)
    note = add_signatures(note, [c.cosign(text, 1_767_225_600 + i) for i, c in enumerate(cosigners)])
    policy = WitnessPolicy.k_of_n(2, [Witness(f"w{i}", c.key) for i, c in enumerate(cosigners, 1)])
    device_entry = LoggedLeaf(leaves[0], 0, tuple(merkle.inclusion_proof(0, hashes_)))
    step = (LOG_SIZE - 1) // count
    bundles = [Bundle(LoggedLeaf(leaves[i], i, tuple(merkle.inclusion_proof(i, hashes_))), (device_entry,),
                      note).to_text() for i in range(1, LOG_SIZE, step)][:count]
    return bundles, log_key, policy


def per_bundle(count: int, rounds: int) -> dict[str, float]:
    bundles, log_key, policy = sample_log(count)
    for text in bundles:  # every bundle holds, with both policies, before anything is timed
        verify_bundle(text, log_key.verifier)
        assert verify_bundle(text, log_key.verifier, policy).cosigners == ("w1", "w2", "w3")
    # The floor: the same kinds of verification on the same kinds of keys, bare.
    ecdsa_key = ec.generate_private_key(ec.SECP256R1())
    ecdsa_pub = ecdsa_key.public_key()
    parsed = [parse_message(Bundle.parse(t).reading.data) for t in bundles]
    ecdsa_sigs = [(ecdsa_key.sign(p.reading_bytes, ec.ECDSA(hashes.SHA256())), p.reading_bytes) for p in parsed]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ed_keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    body = split_note(bundles[0].split("\n\n", 1)[1])[0].encode()
    ed_sigs = [(k.public_key(), k.sign(body)) for k in ed_keys]  # key objects made once, as ours

    def ours(*args: WitnessPolicy) -> Callable[[], None]:
        def run() -> None:
            for text in bundles:
                verify_bundle(text, log_key.verifier, *args)
        return run

    def floor(eds: int) -> Callable[[], None]:
        def run() -> None:
            for sig, data in ecdsa_sigs:
                ecdsa_pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
                for key, ed_sig in ed_sigs[:eds]:
                    key.verify(ed_sig, body)
        return run

    best = interleaved({"single": ours(), "floor1": floor(1), "quorum": ours(policy), "floor4": floor(4)}, rounds)
    n = len(bundles)
    out = {f"{name}_us": 1e6 * cpu / n for name, (cpu, _) in best.items()}
    out.update({f"{name}_us_wall": 1e6 * wall / n for name, (_, wall) in best.items()})
    out["bundles"] = n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="distinct messages per round")
    parser.add_argument("--bundles", type=int, default=200, help="distinct bundles per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    parser.add_argument("--gap", action="store_true", help="only: where the per-message gap comes from")
    args = parser.parse_args()
    if args.gap:
        load = os.getloadavg()[0]
        for name, us in gap(args.n, args.rounds).items():
            print(f"{name:16} {us:7.1f} µs CPU per message")
        print(f"load average (1 min): {load:.2f} -> {os.getloadavg()[0]:.2f}")
        return
    load_before = os.getloadavg()[0]
    message = per_message(args.n, args.rounds)
    bundle = per_bundle(args.bundles, args.rounds)
    load_after = os.getloadavg()[0]
    print(f"full per-message check: {message['full_per_s']:,.0f}/s, bare ECDSA verify {message['bare_per_s']:,.0f}/s,"
          f" ratio {message['ratio']:.2f} (CPU time; wall: {message['ratio_wall']:.2f}), n={args.n}")
    for label, ours, floor in (("log key only", "single", "floor1"), ("2-of-3 quorum", "quorum", "floor4")):
        print(f"bundle, {label}: {bundle[ours + '_us']:,.0f} µs CPU ({bundle[ours + '_us_wall']:,.0f} µs wall); "
              f"bare floor {bundle[floor + '_us']:,.0f} µs CPU ({bundle[floor + '_us_wall']:,.0f} µs wall)")
    print(f"load average (1 min): {load_before:.2f} -> {load_after:.2f}")
    if args.json:
        print(json.dumps({"message": message, "bundle": bundle, "load_before": round(load_before, 2),
                          "load_after": round(load_after, 2), "n": args.n, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
