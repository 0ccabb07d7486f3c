"""Entry point of the ``meterchain`` command: composes the commands each part defines."""

from __future__ import annotations

import sys

import typer

HELP = "Verifiable smart-meter data, from the meter's serial port to a settled bill."


def build_app(only: str | None = None) -> typer.Typer:
    """The top-level app with every part's commands, or with only ``only``'s (``"agent"``)."""
    app = typer.Typer(name="meterchain", help=HELP, no_args_is_help=True, add_completion=False)
    if only == "agent":
        # Lazy on purpose: `meterchain agent …` runs on gateways (a Pi Zero's 512 MB). Importing
        # every part's commands pulls the backend's FastAPI, pydantic, numpy and rich into the
        # agent's process: ≈ 150 MB peak at import against ≈ 30 MB for the agent's own
        # (docs/benchmarks.md, "Gateway agent: resident memory"; bench/bench_agent_rss.py).
        from meterchain.agent import cli as agent_cli

        app.add_typer(agent_cli.app, name="agent")
        return app
    from meterchain.cli import commands

    commands.register(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command, built on first use (tests import it; ``main`` may not need it)."""
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


def main() -> None:
    build_app("agent" if sys.argv[1:2] == ["agent"] else None)()


if __name__ == "__main__":
    main()
