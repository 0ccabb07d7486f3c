"""The distribution's layout: every package folder ships in the wheel, imports point one way."""

from __future__ import annotations

import ast
import tomllib

from tests.support.paths import REPO_ROOT

ROOT = REPO_ROOT
FOLDERS = {
    "meterchain.contract": "contract",
    "meterchain.agent": "agent",
    "meterchain.backend": "backend",
    "meterchain.bridge": "firmware-bridge",
    "meterchain.cli": "cli",
    "meterchain.mqtt": "mqtt",
}


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in FOLDERS.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def _imports(folder: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_import_graph_flows_one_way() -> None:
    # contract, mqtt <- agent, backend; bridge <- agent; nothing imports the cli.
    rules = {
        "contract": ("meterchain.agent", "meterchain.backend", "meterchain.bridge", "meterchain.cli"),
        "firmware-bridge": ("meterchain.agent", "meterchain.backend", "meterchain.contract", "meterchain.cli"),
        "agent": ("meterchain.backend", "meterchain.cli"),
        "backend": ("meterchain.agent", "meterchain.bridge", "meterchain.cli"),
        "mqtt": ("meterchain.agent", "meterchain.backend", "meterchain.bridge", "meterchain.cli"),
    }
    for folder, forbidden in rules.items():
        bad = {m for m in _imports(folder) if m.startswith(forbidden)}
        assert not bad, f"{folder}/ imports {sorted(bad)}"


def test_no_gpl_package_in_product_code() -> None:
    gpl = ("gurux", "pymerkle", "smllib")
    for folder in FOLDERS.values():
        bad = {m for m in _imports(folder) if m.split(".")[0].startswith(gpl)}
        assert not bad, f"{folder}/ imports GPL package(s) {sorted(bad)}"
