"""Shared by several test modules (moved here from test_installer_backend.py, so no test imports another)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def register_scopes(db: Path) -> None:
    """The parties the tokens are scoped to (parties tables, migration 3)."""
    with sqlite3.connect(db) as rows:
        rows.execute("INSERT INTO utilities VALUES ('swx', 'Stadtwerke X', 0)")
        rows.execute("INSERT INTO communities VALUES ('sunny-side', 'swx', 'Sunny Side', 0)")
