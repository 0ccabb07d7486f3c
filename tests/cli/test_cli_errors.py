"""`meterchain verify` and `meterchain utility pull|verify` when something is wrong: each failure
exits with its status (2: the input could not be used, 1: it did not verify) and says what is
wrong in words, never a traceback. In process, through typer's CliRunner."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from meterchain.cli.main import build_app
from meterchain.mqtt.broker import free_port
from typer.testing import CliRunner

from tests.support.contract import SmallLog

WIDE = {"COLUMNS": "200"}


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(), list(args), env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.fixture
def bundle(small_log: SmallLog, tmp_path: Path) -> Path:
    path = tmp_path / "r.tlog-proof"
    path.write_text(small_log.bundle(3).to_text())
    return path


# ------------------------------------------------------------------ meterchain verify


def test_a_good_bundle_verifies_and_quiet_prints_nothing(small_log: SmallLog, bundle: Path) -> None:
    key = str(small_log.log_key.verifier)
    status, out = _invoke("verify", str(bundle), "--log-key", key)
    assert status == 0 and "verified: reading gw-1#" in out
    assert _invoke("verify", str(bundle), "--log-key", key, "--quiet") == (0, "")


def test_the_log_key_may_be_a_file_and_a_bad_one_is_named(small_log: SmallLog, bundle: Path,
                                                          tmp_path: Path) -> None:
    key_file = tmp_path / "log.pub"
    key_file.write_text(str(small_log.log_key.verifier) + "\n")
    assert _invoke("verify", str(bundle), "--log-key", str(key_file))[0] == 0
    status, out = _invoke("verify", str(bundle), "--log-key", str(tmp_path / "missing.pub"))
    assert status == 2 and "cannot read log key file" in out
    key_file.write_text("log.meterchain.test+00000000+AAAA\n")
    status, out = _invoke("verify", str(bundle), "--log-key", str(key_file))
    assert status == 2 and "not a log public key" in out


def test_a_bundle_that_cannot_be_read_exits_2(small_log: SmallLog, tmp_path: Path) -> None:
    key = str(small_log.log_key.verifier)
    status, out = _invoke("verify", str(tmp_path / "none.tlog-proof"), "--log-key", key)
    assert status == 2 and "FAIL encoding: cannot read" in out
    binary = tmp_path / "binary.tlog-proof"
    binary.write_bytes(b"\xff\xfe\x00")
    assert _invoke("verify", str(binary), "--log-key", key)[0] == 2


def test_a_tampered_bundle_names_the_check_that_failed_after_those_that_held(
        small_log: SmallLog, bundle: Path) -> None:
    other_key = small_log.log_key.__class__.generate("log.meterchain.test").verifier
    status, out = _invoke("verify", str(bundle), "--log-key", str(other_key))
    assert status == 1 and "FAIL" in out and "verified:" not in out
    assert _invoke("verify", str(bundle), "--log-key", str(other_key), "-q") == (1, "")


def test_a_policy_file_that_cannot_be_used_is_refused(small_log: SmallLog, bundle: Path, tmp_path: Path) -> None:
    key = str(small_log.log_key.verifier)
    status, out = _invoke("verify", str(bundle), "--log-key", key, "--policy", str(tmp_path / "none.policy"))
    assert status == 2 and "cannot read policy file" in out
    (tmp_path / "bad.policy").write_text("quorum nobody\n")
    status, out = _invoke("verify", str(bundle), "--log-key", key, "--policy", str(tmp_path / "bad.policy"))
    assert status == 2 and "policy file" in out


# ------------------------------------------------------------------ meterchain utility


def test_utility_verify_fails_each_unusable_page_and_goes_on(small_log: SmallLog, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xa1not a page")
    status, out = _invoke("utility", "verify", str(tmp_path / "missing.cbor"), str(garbage),
                          "--log-key", str(small_log.log_key.verifier))
    assert status == 1
    assert f"FAIL {tmp_path / 'missing.cbor'}: cannot read" in out
    assert f"FAIL {garbage}:" in out


class _Refusing(BaseHTTPRequestHandler):
    """A backend that refuses: JSON errors as the API writes them, or a proxy's HTML page."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") == "Bearer html":
            body, kind, code = b"<html>502 Bad Gateway</html>", "text/html", 502
        else:
            body = json.dumps({"error": "unauthorized", "detail": "unknown API key",
                               "hint": "ask the operator for a utility key"}).encode()
            kind, code = "application/json", 401
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_utility_pull_says_what_the_backend_answered(small_log: SmallLog, refusing: str, tmp_path: Path) -> None:
    key = str(small_log.log_key.verifier)
    status, out = _invoke("utility", "pull", "--api", refusing, "--key", "wrong", "--log-key", key,
                          "--out", str(tmp_path / "pages"))
    assert status == 2
    assert "FAIL HTTP 401: unauthorized: unknown API key (ask the operator for a utility key)" in out
    status, out = _invoke("utility", "pull", "--api", refusing, "--key", "html", "--log-key", key,
                          "--out", str(tmp_path / "pages"))
    assert status == 2 and "FAIL HTTP 502: <html>502 Bad Gateway</html>" in out
    assert list((tmp_path / "pages").iterdir()) == []  # nothing stored from a refusal


def test_utility_pull_says_when_the_backend_cannot_be_reached(small_log: SmallLog, tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    status, out = _invoke("utility", "pull", "--api", api, "--key", "k", "--log-key",
                          str(small_log.log_key.verifier), "--out", str(tmp_path / "pages"))
    assert status == 2 and f"FAIL cannot reach {api}" in out
