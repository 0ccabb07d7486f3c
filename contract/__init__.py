"""The meterchain contract: the signed reading, log leaves, checkpoints, batch headers and proofs.

Pure code shared by the gateway agent and the backend. It imports neither of them, does no I/O,
and defines exactly one byte form for everything it encodes (see docs/format.md).
"""
