"""Commissioning gateways: one-time installer tokens, provisioning, and their routes and CLI."""
