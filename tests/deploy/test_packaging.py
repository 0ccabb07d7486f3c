"""What an install ships: the dashboard's templates and static files, declared as package data."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_web_files_are_package_data_and_not_discovered_as_packages() -> None:
    """With include-package-data on, setuptools took templates/ and static/ for undeclared
    packages (≈ 100 lines of warnings on every install); off, the wheel holds the same files
    (checked by building both: identical file lists) because package-data names them all."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["include-package-data"] is False
    patterns = setuptools["package-data"]["meterchain.backend.web"]
    web = ROOT / "backend" / "web"
    files = [p.relative_to(web).as_posix() for d in ("templates", "static")
             for p in (web / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert unshipped == []
