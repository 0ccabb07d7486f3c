"""``meterchain witness init|key`` and the config file; the systemd unit runs a real command."""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest
from meterchain.contract.cosignature import CosignerKey
from meterchain.contract.note import NoteSigner
from meterchain.witness.cli import app
from meterchain.witness.config import WitnessConfigError, load_config
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


def test_init_writes_key_and_config_and_key_prints_it(tmp_path: Path) -> None:
    log = NoteSigner.generate("meterchain.test/log")
    runner = CliRunner()
    done = runner.invoke(app, ["init", "--dir", str(tmp_path), "--name", "witness.test/w1",
                               "--log", str(log.verifier), "--listen", "127.0.0.1:7399"])
    assert done.exit_code == 0, done.output
    vkey = done.output.strip().rsplit(" ", 1)[-1]
    assert CosignerKey.parse(vkey).name == "witness.test/w1"
    assert stat.S_IMODE((tmp_path / "witness.key").stat().st_mode) == 0o600
    config = load_config(tmp_path / "witness.toml")
    assert (config.host, config.port, config.db) == ("127.0.0.1", 7399, tmp_path / "witness.db")
    assert config.logs == {"meterchain.test/log": (log.verifier,)}
    shown = runner.invoke(app, ["key", "-c", str(tmp_path / "witness.toml")])
    assert shown.output.strip() == vkey
    again = runner.invoke(app, ["init", "--dir", str(tmp_path), "--name", "witness.test/w1"])
    assert again.exit_code == 2 and "not overwriting" in again.output


@pytest.mark.parametrize(("text", "why"), [
    ('logs = []\n', "non-empty list"),
    ('colour = "red"\nlogs = ["x"]\n', "unknown settings"),
    ('listen = "nowhere"\n', "host:port"),
])
def test_config_errors_name_the_file(tmp_path: Path, text: str, why: str) -> None:
    runner = CliRunner()
    runner.invoke(app, ["init", "--dir", str(tmp_path), "--name", "witness.test/w1"])
    path = tmp_path / "witness.toml"
    path.write_text(text)
    with pytest.raises(WitnessConfigError, match=why) as failed:
        load_config(path)
    assert str(path) in str(failed.value)


def test_systemd_unit_runs_witness_serve() -> None:
    unit = (ROOT / "deploy/witness/meterchain-witness.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1:4] == ["witness", "serve", "--config"]
    assert argv[4].startswith("/var/lib/meterchain-witness/")
