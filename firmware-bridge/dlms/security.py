"""Association security: what goes into the AARQ, how the AARE is checked, how APDUs are protected.

Only lowest-level (no authentication) and low-level security (a password) exist today. HLS-GMAC and
ciphered APDUs (security suites 0-2) slot in as one more class with the same four members: its
``build_aarq`` sets the ciphered context, mechanism 5 and a challenge; ``check_aare`` runs passes
3/4; ``protect``/``unprotect`` wrap APDUs in glo-/ded-ciphering. Client and server use these.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from meterchain.bridge.dlms.apdu import (
    CONTEXT_LN,
    MECHANISM_LLS,
    Aare,
    Aarq,
    AcseServiceUser,
    InitiateRequest,
)


class Authentication(Protocol):
    """One security policy for an association, used by the client (and mirrored by the server)."""

    def build_aarq(self, initiate: InitiateRequest) -> Aarq: ...

    def check_aare(self, aare: Aare) -> None: ...

    def protect(self, apdu: bytes) -> bytes: ...

    def unprotect(self, apdu: bytes) -> bytes: ...

    def verify_aarq(self, aarq: Aarq) -> AcseServiceUser: ...


@dataclass(frozen=True, slots=True)
class LowestLevelSecurity:
    """No authentication: the public client (address 16) of most meters."""

    def build_aarq(self, initiate: InitiateRequest) -> Aarq:
        return Aarq(application_context=CONTEXT_LN, user_information=initiate)

    def check_aare(self, aare: Aare) -> None:
        return None

    def protect(self, apdu: bytes) -> bytes:
        return apdu

    def unprotect(self, apdu: bytes) -> bytes:
        return apdu

    def verify_aarq(self, aarq: Aarq) -> AcseServiceUser:
        """Server side: an AARQ that asks for authentication anyway is still fine."""
        return AcseServiceUser.NULL


@dataclass(frozen=True, slots=True)
class LowLevelSecurity:
    """LLS: the password travels in clear in the AARQ's calling-authentication-value."""

    password: bytes

    def build_aarq(self, initiate: InitiateRequest) -> Aarq:
        return Aarq(
            application_context=CONTEXT_LN,
            mechanism=MECHANISM_LLS,
            calling_authentication=self.password,
            user_information=initiate,
        )

    def check_aare(self, aare: Aare) -> None:
        return None

    def protect(self, apdu: bytes) -> bytes:
        return apdu

    def unprotect(self, apdu: bytes) -> bytes:
        return apdu

    def verify_aarq(self, aarq: Aarq) -> AcseServiceUser:
        """Server side: the mechanism must be LLS and the password must match."""
        if aarq.mechanism is None:
            return AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_REQUIRED
        if aarq.mechanism != MECHANISM_LLS:
            return AcseServiceUser.AUTHENTICATION_MECHANISM_NAME_NOT_RECOGNISED
        if aarq.calling_authentication is None:
            return AcseServiceUser.AUTHENTICATION_REQUIRED
        if not hmac.compare_digest(aarq.calling_authentication, self.password):
            return AcseServiceUser.AUTHENTICATION_FAILURE
        return AcseServiceUser.NULL
