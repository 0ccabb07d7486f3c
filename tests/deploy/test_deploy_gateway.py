"""deploy/gateway: the install script into a temporary prefix, first boot, units, udev rules.

The install test pip-installs the checkout into a fresh virtual environment (about 20 s here with
a warm pip cache; it needs PyPI or a configured index/wheelhouse). ``systemd-analyze verify`` runs
where systemd is installed and skips cleanly elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
GATEWAY = ROOT / "deploy" / "gateway"
BACKEND = ROOT / "deploy" / "backend"
UNITS = ("meterchain-agent.service", "meterchain-agent.path", "meterchain-firstboot.service")
# The backend's: one unit, or (scale-out) the ingest worker template beside it with a drop-in.
BACKEND_UNITS = ("meterchain-backend.service", "meterchain-ingest@.service",
                 "meterchain-backend.service.d/scale-out.conf")


# The install's pip run (building the checkout, a fresh virtual environment) takes about 20 s on an
# idle machine and minutes at load 10-20; the module-scoped install counts against the first test
# that uses it, so this module's budget covers the whole install (the suite's default is 120 s).
INSTALL_WITHIN = 480
pytestmark = pytest.mark.timeout(INSTALL_WITHIN + 120)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=INSTALL_WITHIN, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway installed from this checkout into a temporary prefix, without systemd."""
    prefix = tmp_path_factory.mktemp("stage")
    done = _run(
        ["bash", str(GATEWAY / "install.sh"), "--prefix", str(prefix), "--no-systemd",
         "--source", str(ROOT), "--python", sys.executable]
    )
    if done.returncode != 0 and "Could not find a version" in done.stderr + done.stdout:
        pytest.skip(f"pip cannot reach a package index here:\n{done.stderr[-2000:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "next: sudo meterchain agent provision" in done.stdout
    return prefix


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_lays_out_the_tree(staged: Path) -> None:
    venv = staged / "opt" / "meterchain"
    assert _mode(staged / "etc" / "meterchain") == 0o750
    assert _mode(staged / "var" / "lib" / "meterchain") == 0o750
    for unit in UNITS:
        installed = staged / "etc" / "systemd" / "system" / unit
        assert installed.read_bytes() == (GATEWAY / unit).read_bytes()
        assert _mode(installed) == 0o644
    assert (staged / "etc/udev/rules.d/99-meterchain-serial.rules").read_bytes() == (
        GATEWAY / "99-meterchain-serial.rules"
    ).read_bytes()
    assert (staged / "etc/systemd/journald.conf.d/meterchain.conf").is_file()
    assert os.access(venv / "libexec" / "firstboot.sh", os.X_OK)
    # The command on PATH points at the final location, not the staging prefix.
    assert os.readlink(staged / "usr/local/bin/meterchain") == "/opt/meterchain/bin/meterchain"

    help_text = _run([str(venv / "bin" / "meterchain"), "--help"])
    assert help_text.returncode == 0, help_text.stderr
    assert "agent" in help_text.stdout and "verify" in help_text.stdout
    # The package really lives in the new environment, not in the test's own.
    where = _run([str(venv / "bin" / "python"), "-c", "import meterchain.agent.systemd as m; print(m.__file__)"])
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr


def test_install_again_upgrades_in_place(staged: Path) -> None:
    key = staged / "etc" / "meterchain" / "keep-me.toml"
    key.write_text("# an installer's config survives an upgrade\n")
    done = _run(
        ["bash", str(GATEWAY / "install.sh"), "--prefix", str(staged), "--no-systemd",
         "--source", str(ROOT), "--python", sys.executable, "--pip-arg", "--no-deps"]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "made a virtual environment" not in done.stdout
    assert key.read_text().startswith("# an installer's config")
    key.unlink()


def test_firstboot_makes_one_device_key(staged: Path) -> None:
    env = {**os.environ, "MC_ROOT": str(staged)}
    script = staged / "opt" / "meterchain" / "libexec" / "firstboot.sh"
    first = _run(["bash", str(script)], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    key = staged / "etc" / "meterchain" / "device-key.pem"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(key) == 0o600
    public = (staged / "var/lib/meterchain/device-public.txt").read_text()
    assert re.search(r"^key id: [0-9a-f]{16,}$", public, re.M), public
    assert "meterchain agent provision --backend URL --token TOKEN" in first.stdout
    assert (staged / "var/lib/meterchain/.firstboot-done").exists()

    again = _run(["bash", str(script)], env=env)
    assert again.returncode == 0 and "keeping it" in again.stdout
    assert (
        key.read_bytes() == key.read_bytes() and public == (staged / "var/lib/meterchain/device-public.txt").read_text()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --wheel PATH or --source DIR"),
        (["--wheel", "/nonexistent/meterchain.whl"], "no wheel at"),
        (["--source", "/"], "has no pyproject.toml"),
        (["--wheel", "x.whl", "--source", "."], "not both"),
        (["--source", ".", "--python", "/nonexistent/python3"], "not found"),
        (["--bogus"], "unknown option"),
    ],
)
def test_install_refuses_bad_arguments_before_changing_anything(tmp_path: Path, args: list[str], message: str) -> None:
    prefix = tmp_path / "untouched"
    done = _run(["bash", str(GATEWAY / "install.sh"), "--prefix", str(prefix), "--no-systemd", *args], cwd=ROOT)
    assert done.returncode != 0
    assert message in done.stderr
    assert not prefix.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may install with systemd")
def test_install_with_systemd_needs_root(tmp_path: Path) -> None:
    done = _run(["bash", str(GATEWAY / "install.sh"), "--prefix", str(tmp_path), "--source", str(ROOT)])
    assert done.returncode != 0 and "run as root" in done.stderr


# --- systemd units ----------------------------------------------------------------------------------


def _fake_root(tmp_path: Path) -> Path:
    """A root for ``systemd-analyze verify --root``: the host's system units, our units, and an
    executable at every path an ExecStart names (verify checks that they exist)."""
    root = tmp_path / "root"
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if system_units is None:
        pytest.skip("no systemd unit directory on this machine")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for source in [*(GATEWAY / u for u in UNITS), *(BACKEND / u for u in BACKEND_UNITS)]:
        target = unit_dir / (source.relative_to(BACKEND) if BACKEND in source.parents else source.name)
        target.parent.mkdir(exist_ok=True)
        shutil.copy(source, target)
        for exec_path in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", source.read_text(), re.M):
            target = root / exec_path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\nexit 0\n")
            target.chmod(0o755)
    return root


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    root = _fake_root(tmp_path)
    names = [*UNITS, "meterchain-backend.service", "meterchain-ingest@1.service"]
    done = _run([analyze, "verify", "--man=no", f"--root={root}", *(f"/etc/systemd/system/{n}" for n in names)])
    # verify prints unknown keys and bad values as warnings with exit code 0: treat any word
    # about our files as a failure.
    ours = [line for line in done.stderr.splitlines() if "meterchain" in line]
    assert done.returncode == 0 and not ours, done.stderr


def test_units_expose_little(tmp_path: Path) -> None:
    """systemd's own exposure score (0 = locked down, 10 = unprotected); ours are about 2."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    root = _fake_root(tmp_path)
    for name in ("meterchain-agent.service", "meterchain-backend.service",
                 "meterchain-ingest@1.service"):
        done = _run([analyze, "security", "--offline=yes", "--threshold=30", "--no-pager",
                     f"--root={root}", f"/etc/systemd/system/{name}"])
        if "Unknown option" in done.stderr or "unrecognized option" in done.stderr:
            pytest.skip("this systemd-analyze has no offline security check (systemd < 250)")
        score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
        assert done.returncode == 0 and score and float(score.group(1)) <= 3.0, done.stdout[-800:] + done.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    root = _fake_root(tmp_path)
    unit = root / "etc/systemd/system/meterchain-agent.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSytem=yes"))
    done = _run([analyze, "verify", "--man=no", f"--root={root}", "/etc/systemd/system/meterchain-agent.service"])
    assert "ProtectSytem" in done.stderr


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_agent_unit_is_hardened_and_watched() -> None:
    agent = _unit_settings(GATEWAY / "meterchain-agent.service")
    assert agent["Type"] == ["notify"] and agent["NotifyAccess"] == ["main"]
    assert int(agent["WatchdogSec"][0]) >= 60
    assert agent["Restart"] == ["on-failure"]  # includes a watchdog timeout
    assert agent["User"] == ["meterchain"]
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "DevicePolicy": "closed", "ReadWritePaths": "/var/lib/meterchain",
    }.items():
        assert agent[key] == [value], key
    assert {"char-ttyUSB rw", "char-ttyACM rw", "char-ttyAMA rw"} <= set(agent["DeviceAllow"])
    assert "ProtectClock" not in agent  # the agent reads adjtimex(2) for each reading's clock state
    assert agent["ExecStart"] == ["/opt/meterchain/bin/meterchain agent run --config /etc/meterchain/agent.toml"]


# --- udev rules and cloud-init ------------------------------------------------------------------------

_TOKEN = re.compile(r'\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')


def test_udev_rules_are_well_formed() -> None:
    text = (GATEWAY / "99-meterchain-serial.rules").read_text()
    labels = set(re.findall(r'^LABEL="([^"]+)"', text, re.M))
    gotos = set(re.findall(r'GOTO="([^"]+)"', text))
    assert gotos <= labels
    symlinks = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        tokens, pos = [], 0
        while pos < len(line):
            match = _TOKEN.match(line, pos)
            assert match, f"line {number}: cannot parse {line[pos:]!r}"
            tokens.append(match.groups())
            pos = match.end()
        symlinks += [value for key, op, value in tokens if key == "SYMLINK"]
    assert symlinks and all(link.startswith("meterchain-") for link in symlinks)
    # The common adapters: FTDI, CH340/CH9102, CP210x, PL2303.
    for vendor in ("0403", "1a86", "10c4", "067b"):
        assert f'ATTRS{{idVendor}}=="{vendor}"' in text
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in text


def test_cloud_init_user_data() -> None:
    yaml = pytest.importorskip("yaml")
    text = (GATEWAY / "cloud-init" / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    assert "python3-venv" in config["packages"]
    script = config["runcmd"][0][-1]
    assert "gateway/install.sh" in script and "--wheel" in script
    assert config["runcmd"][0][:2] == ["bash", "-c"]
    assert "meterchain-firstboot.service" in script
    assert _run(["bash", "-n", "-c", script]).returncode == 0


def test_shell_scripts_parse() -> None:
    for script in [*GATEWAY.glob("*.sh"), *BACKEND.glob("*.sh")]:
        done = _run(["bash", "-n", str(script)])
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
