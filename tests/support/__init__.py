"""Helpers the tests and bench/ share: backends, gateways, scenarios, strategies, paths."""
