"""Netting and settlement: the pure engine (``netting``), the runner, verification, routes, CLI
and tables."""
