"""Entry point of the ``meterchain`` command: composes the commands each part defines."""

from __future__ import annotations

import typer
from meterchain.cli import commands

app = typer.Typer(
    name="meterchain",
    help="Verifiable smart-meter data, from the meter's serial port to a settled bill.",
    no_args_is_help=True,
    add_completion=False,
)
commands.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
