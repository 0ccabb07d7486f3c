"""The meter side: sans-IO codecs for meter protocols, serial transports and meter emulators.

Imports nothing else of meterchain: the agent builds on it, never the other way round.
"""
