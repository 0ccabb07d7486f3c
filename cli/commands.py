"""Which command lives where. Each part owns a typer sub-app in its own ``cli`` module."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every part's commands to the top-level app."""
