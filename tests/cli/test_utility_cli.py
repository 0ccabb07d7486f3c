"""`meterchain utility pull|verify` against a running API, and contract.utility_batch's checks."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import cbor2
import pytest
import uvicorn
from meterchain.backend.api.app import create_app
from meterchain.cli.main import app as cli
from meterchain.contract.note import NoteSigner
from meterchain.contract.utility_batch import BatchError, verify_page
from typer.testing import CliRunner

from tests.support.humantime import assert_no_unix_seconds
from tests.support.utility import ADMIN, make_world


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    world = asyncio.run(make_world(tmp_path_factory.mktemp("utility-cli"), rounds=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(str(world.db), ADMIN, world.log_key.verifier),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield world, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_pull_verifies_and_stores_every_page_and_verify_rechecks_them(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world, api = served
    key = str(world.log_key.verifier)
    out = tmp_path / "pages"
    result = CliRunner().invoke(cli, ["utility", "pull", "--api", api, "--key", world.tokens["u1"],
                                      "--log-key", key, "--out", str(out), "--limit", "3"])
    assert result.exit_code == 0, result.output
    pages = sorted(out.glob("*.cbor"))
    assert len(pages) == 2 and "4 readings verified" in result.output
    assert "--from 18" in result.output  # 2 device and 4 assignment leaves + 3 readings per round
    assert_no_unix_seconds(result.output, "meterchain utility pull")
    result = CliRunner().invoke(cli, ["utility", "verify", *map(str, pages), "--log-key", key])
    assert result.exit_code == 0 and result.output.count("OK") == 2
    assert "(3 with their metering point proven)" in result.output
    assert_no_unix_seconds(result.output, "meterchain utility verify")

    doc = cbor2.loads(pages[0].read_bytes())
    doc["entries"][1]["seq"] += 1
    pages[0].write_bytes(cbor2.dumps(doc, canonical=True))
    result = CliRunner().invoke(cli, ["utility", "verify", *map(str, pages), "--log-key", key])
    assert result.exit_code == 1 and "FAIL" in result.output and "[entry]" in result.output

    # Issue 17: an entry moved to another metering point fails, naming the check.
    doc = cbor2.loads(pages[1].read_bytes())
    assert doc["entries"][0]["point"] == "mp-1"
    doc["entries"][0]["point"] = "mp-2"
    pages[1].write_bytes(cbor2.dumps(doc, canonical=True))
    result = CliRunner().invoke(cli, ["utility", "verify", str(pages[1]), "--log-key", key])
    assert result.exit_code == 1 and "[point-assigned]" in result.output, result.output
    assert "gw-a/M-1 to mp-1, not mp-2" in result.output

    wrong_key = CliRunner().invoke(cli, ["utility", "pull", "--api", api, "--key", "mck_nope",
                                         "--log-key", key, "--out", str(out)])
    assert wrong_key.exit_code == 2 and "unauthorized" in wrong_key.output


def test_verify_page_names_the_failed_check(served) -> None:  # type: ignore[no-untyped-def]
    world, api = served
    import urllib.request

    def fetch(query: str) -> bytes:
        request = urllib.request.Request(f"{api}/api/v1/utility/batch?{query}",
                                         headers={"Authorization": f"Bearer {world.tokens['u2']}"})
        with urllib.request.urlopen(request) as answer:
            return answer.read()

    verifier = world.log_key.verifier
    page = fetch("from=12&to=18")
    verified = verify_page(page, verifier)
    assert len(verified.entries) == 4 and {e.point for e in verified.entries} == {"mp-2", "mp-3"}
    assert verify_page(fetch("from=12&to=18&format=cbor"), verifier).entries == verified.entries

    def broken(change) -> str:  # type: ignore[no-untyped-def]
        doc = json.loads(page)
        change(doc)
        with pytest.raises(BatchError) as caught:
            verify_page(json.dumps(doc).encode(), verifier)
        return caught.value.check

    assert broken(lambda d: d["entries"].reverse()) == "range"
    assert broken(lambda d: d["consistency"].pop()) == "proof"
    assert broken(lambda d: d["entries"][0].update(proof=d["entries"][1]["proof"])) == "inclusion"
    assert broken(lambda d: d["keys"][0].update(proof=d["entries"][0]["proof"])) == "device-inclusion"
    assert broken(lambda d: d.update(keys=[])) == "key-validity"
    assert broken(lambda d: d["entries"][0].update(point="mp-3")) == "point-assigned"
    assert broken(lambda d: d.update(assignments=[])) == "point-assigned"
    assert broken(lambda d: d["assignments"][0].update(salt=d["assignments"][-1]["proof"][0])
                  ) == "assignment-inclusion"
    assert broken(lambda d: d.update(t="meterchain/utility-batch/v1", assignments=[])) == "encoding"
    assert broken(lambda d: d.update(to=15)) == "checkpoint"
    assert broken(lambda d: d.update(extra=1)) == "encoding"
    assert broken(lambda d: d["entries"][0].update(index="2")) == "encoding"
    with pytest.raises(BatchError) as caught:
        verify_page(page, NoteSigner.generate("utility.test/log").verifier)
    assert caught.value.check == "checkpoint"
    assert caught.value.diagnostics().startswith("[checkpoint] ") and "passed" not in caught.value.context
    for junk in (b"", b"{", b"\xff\x00", b"[]"):
        with pytest.raises(BatchError):
            verify_page(junk, verifier)
