"""Erasure of a household's data: readings stay in the log as hashes, their data goes."""
