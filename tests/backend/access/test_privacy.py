"""What the public log reveals: hashes only. Given everything public (checkpoints, consistency
proofs, batch headers, every level-0 tile hash = every leaf hash), an attacker who guesses
someone's reading exactly (right seq, right values, the very bytes) still cannot confirm the
guess: the leaf covers the randomised ECDSA signature, which only the device's key produces."""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.backend.log.tiles import tile_path
from meterchain.contract import merkle
from meterchain.contract.cbor import encode
from meterchain.contract.message import SignedReading, parse_message, sign_reading
from meterchain.contract.signing import generate_private_key_pem, load_signer

from tests.support.backend import Gateway, backend, close

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

METER = "SDM-PRIVATE-7"


async def test_public_data_does_not_confirm_a_guessed_reading(tmp_path: Path) -> None:
    gw = Gateway("gw-private", meter=METER)
    admin, ingest, sealer, store = await backend(tmp_path, gw)
    await ingest.process([gw.message(s, import_wh=4_321_000 + 250 * s) for s in range(1, 6)])
    await sealer.seal_all()
    await ingest.process([gw.message(s, import_wh=4_321_000 + 250 * s) for s in range(6, 9)])
    await sealer.seal_all()
    target = await store.reading("gw-private", 3)
    assert target is not None

    # Everything an anonymous caller can fetch.
    public: list[bytes] = []
    with TestClient(create_app(str(tmp_path / "mc.db"), "admin", sealer.signer.verifier)) as http:
        checkpoint = http.get("/checkpoint").text
        size = int(checkpoint.split("\n")[1])
        assert size == 9  # the enrolment's device leaf and eight readings
        for url in ("/checkpoint", "/api/v1/checkpoint", "/api/v1/batches", "/batch/0", "/batch/1",
                    "/api/v1/proofs/consistency?old=6&new=9", "/api/v1/log/public-key"):
            answer = http.get(url)
            assert answer.status_code == 200, url
            public.append(answer.content)
        tile = http.get("/" + tile_path(0, 0, size))
        assert tile.status_code == 200
        public.append(tile.content)
        # Reading data itself is not public.
        assert http.get("/api/v1/devices/gw-private/readings").status_code == 401
        assert http.get("/api/v1/devices/gw-private/readings/3/bundle").status_code == 401
    leaf_hashes = {tile.content[i:i + 32] for i in range(0, len(tile.content), 32)}
    assert len(leaf_hashes) == size
    with __import__("sqlite3").connect(tmp_path / "mc.db") as db:
        stored = {row[0] for row in db.execute("SELECT leaf_hash FROM leaves")}
    assert leaf_hashes == stored  # the public tile is every leaf hash of the log

    # Nothing public names the device or meter, or carries the reading's bytes in any encoding.
    signed = parse_message(target.message)
    blob = b"\n".join(public)
    for secret in (b"gw-private", METER.encode(), signed.reading_bytes,
                   base64.b64encode(signed.reading_bytes), signed.reading_bytes.hex().encode(),
                   signed.signature):
        assert secret not in blob

    # The real leaf is among the public hashes: whoever holds the message can prove inclusion.
    assert merkle.leaf_hash(target.message) in leaf_hashes
    # The attacker's best guess is the exact reading; every leaf it can build misses.
    guesses = [merkle.leaf_hash(signed.reading_bytes),
               merkle.leaf_hash(encode([signed.reading_bytes, b""])),
               merkle.leaf_hash(signed.reading_bytes + signed.reading_bytes)]
    attacker = load_signer(generate_private_key_pem())
    forged = SignedReading(signed.reading, signed.reading_bytes, attacker.sign(signed.reading_bytes))
    guesses.append(merkle.leaf_hash(forged.to_cbor()))
    # Even the device, signing the very same reading again, makes a different leaf (random k).
    resigned = [sign_reading(signed.reading, gw.signer) for _ in range(32)]
    assert all(isinstance(r, SignedReading) and r.reading_bytes == signed.reading_bytes
               for r in resigned)
    guesses += [merkle.leaf_hash(r.to_cbor()) for r in resigned]
    assert len(set(guesses)) == len(guesses)
    assert not leaf_hashes & set(guesses)
    await close(admin, ingest, sealer, store)
