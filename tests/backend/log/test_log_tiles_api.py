"""The public tlog-tiles API: an independent client, written here from the C2SP specs only
(signed-note, tlog-checkpoint, tlog-tiles, RFC 9162 hashing), copies the log over HTTP from the
real app and rebuilds the signed root, from the leaf tiles and from the upper tiles alike."""

from __future__ import annotations

import warnings
from pathlib import Path

from meterchain.backend.api.app import create_app
from meterchain.contract.batch import SignedBatchHeader, verify_chain

from tests.support.backend import Gateway, backend, close
from tests.support.log import IMMUTABLE, fetch_level, h, open_checkpoint
from tests.support.log import root as mth

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


# ----------------------------------------------------------- the independent client


def _root_from_upper_tiles(levels: dict[int, list[bytes]], size: int) -> bytes:
    """The root from the tree's peaks, each folded from the highest tile level below it."""
    peaks, start = [], 0
    for height in reversed(range(size.bit_length())):
        if size >> height & 1:
            base = height - height % 8
            nodes = levels[base // 8][start >> base : (start >> base) + (1 << (height - base))]
            peaks.append(mth(nodes))  # a perfect subtree: MTH is the plain fold
            start += 1 << height
    top = peaks[-1]
    for peak in reversed(peaks[:-1]):
        top = h(b"\x01" + peak + top)
    return top


# ----------------------------------------------------------------------- the test


async def test_an_independent_client_copies_the_log_and_rebuilds_the_signed_root(
    tmp_path: Path,
) -> None:
    gateways = [Gateway(f"gw-{i}") for i in range(4)]
    admin, ingest, sealer, store = await backend(tmp_path, *gateways, max_leaves=700)
    for start in range(1, 751, 250):
        await ingest.process([g.message(s) for g in gateways for s in range(start, start + 250)])
        await sealer.seal_all()
    size = 4 + 4 * 750  # the enrolment leaves and the readings: 3004, not a multiple of 256
    vkey = str(sealer.signer.verifier)
    with TestClient(create_app(str(tmp_path / "mc.db"), "s3cret", sealer.signer.verifier)) as http:
        answer = http.get("/checkpoint")
        assert answer.headers["content-type"].startswith("text/plain")
        origin, signed_size, root = open_checkpoint(answer.text, vkey)
        assert (origin, signed_size) == ("test.example/log", size)

        levels = {0: fetch_level(http, 0, size), 1: fetch_level(http, 1, size)}
        assert len(levels[0]) == size and len(levels[1]) == size >> 8
        assert mth(levels[0]) == root
        assert _root_from_upper_tiles(levels, size) == root
        # Every level-1 entry is the fold of its 256 leaf hashes.
        assert all(levels[1][i] == mth(levels[0][256 * i : 256 * i + 256])
                   for i in range(len(levels[1])))
        # An older partial tile stays served (immutable); tiles that do not exist yet are 404.
        assert http.get("/tile/0/011.p/3").content == b"".join(levels[0][2816:2819])
        for path in ("tile/0/011", "tile/0/011.p/189", "tile/1/000", "tile/2/000.p/1",
                     "tile/0/x000/011", "tile/entries/000", "tile/9/000"):
            missing = http.get("/" + path)
            assert missing.status_code == 404, path
            assert set(missing.json()) == {"error", "detail", "hint"}
        # The batch chain: immutable per-batch URLs that chain to the signed root.
        headers, index = [], 0
        while (answer := http.get(f"/batch/{index}")).status_code == 200:
            assert answer.headers["cache-control"] == IMMUTABLE
            headers.append(SignedBatchHeader.from_cbor(answer.content))
            index += 1
        assert answer.json()["error"] == "no-such-batch"
        newest = verify_chain(headers, sealer.signer.verifier)
        assert (newest.size, newest.root) == (size, root)  # type: ignore[union-attr]
        # Public: no token needed for any of it.
        assert http.get("/checkpoint", headers={"Authorization": "Bearer wrong"}).status_code == 200
    await close(admin, ingest, sealer, store)
