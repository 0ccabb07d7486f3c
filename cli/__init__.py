"""The ``meterchain`` command line: one typer app composed of each part's own commands."""
