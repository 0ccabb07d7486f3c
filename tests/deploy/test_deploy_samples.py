"""The sample configuration files in deploy/ load as they are, and every setting is explained."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from meterchain.agent.config import load_config
from meterchain.backend.config import BackendConfig

ROOT = Path(__file__).resolve().parents[2]
BACKEND, AGENT = ROOT / "deploy" / "backend" / "backend.toml", ROOT / "deploy" / "gateway" / "agent.toml"


def _undocumented(path: Path) -> list[str]:
    """Setting lines without a comment line right above them (or a setting of the same group)."""
    lines = path.read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "[")):
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#") and not (above and "=" in above):
            bare.append(line)
    return bare


def test_the_backend_sample_loads_and_documents_every_setting() -> None:
    config = BackendConfig.load(BACKEND)
    assert config.http_port == 8080 and config.gateway_broker_url.startswith("mqtts://")
    assert _undocumented(BACKEND) == []
    shown = set(tomllib.loads(BACKEND.read_text())["backend"])
    known = {f.name for f in dataclasses.fields(BackendConfig)} - {"extra"}
    assert shown == known, (f"settings missing from the sample: {sorted(known - shown)}; add each "
                            "to deploy/backend/backend.toml with a comment saying what it does")


def test_the_agent_sample_loads_and_documents_every_setting() -> None:
    config = load_config(AGENT)
    assert config.device_id == "gw-0001" and config.meters[0].modbus_id == 1
    assert config.interval_seconds == 900
    assert _undocumented(AGENT) == []
