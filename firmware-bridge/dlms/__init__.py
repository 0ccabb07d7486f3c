"""DLMS/COSEM over HDLC (IEC 62056-46/-53/-62): a sans-IO codec, a client and a meter emulator.

Licence-clean: written from the published structure of the protocol, no code taken from gurux-dlms
(GPL) or dlms-cosem (BSL). See docs/dlms.md for what is supported.
"""
