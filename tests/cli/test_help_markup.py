"""Every option's help text reaches the terminal whole: rich markup must not eat "[backend]"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import typer
from meterchain.cli.main import app
from typer.testing import CliRunner


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``group`` with its argv path (typer vendors click: duck-typed)."""
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


def test_help_texts_with_brackets_print_as_written() -> None:
    runner = CliRunner()
    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        bracketed = [p.help for p in command.params
                     if p.param_type_name == "option" and p.help and "[" in p.help]
        if not bracketed:
            continue
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, (path, result.output)
        shown = re.sub(r"[│ ]+", " ", result.output)
        for text in bracketed:
            expected = re.sub(r"\s+", " ", text.replace("\\[", "["))
            assert expected in shown, f"`meterchain {' '.join(path)} --help` mangles {text!r}"
            checked += 1
    assert checked >= 3  # serve --config and --broker, provision --meters, scan --out at least
