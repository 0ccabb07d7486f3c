"""A taken HTTP port stops `backend serve` before it creates anything, with the fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from meterchain.backend.api.ports import PortTaken, check_port_free
from meterchain.cli.main import app
from typer.testing import CliRunner


def test_backend_serve_on_a_taken_port_names_the_fix_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, [
            "backend", "serve", "--db", str(tmp_path / "b.sqlite"), "--log-key",
            str(tmp_path / "log.key"), "--broker", "mqtt://127.0.0.1:1", "--http-port", str(port),
            "--admin-token", "x" * 24], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"port {port}" in result.output and "--http-port" in result.output
    assert list(tmp_path.iterdir()) == []  # no database, no log key


def test_a_free_port_passes_and_a_taken_one_raises_with_context() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    check_port_free("127.0.0.1", free)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortTaken) as caught:
            check_port_free("127.0.0.1", taken.getsockname()[1])
    assert caught.value.check == "port-taken"
