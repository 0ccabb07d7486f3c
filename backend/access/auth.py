"""One place that turns a bearer token into a :class:`Principal` (or a refusal).

The configured admin token is the root principal; every other token is an API key looked up by
its SHA-256. Answers: no or unknown token, or a revoked or expired key → 401; a valid key whose
auditor grant has expired, or a key without the scope a route needs → 403. Which *readings* a
principal may see is decided by the store's visibility query, not here (``access/tables.py``).
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from meterchain.backend.access.model import KeyKind, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.contract.humantime import human_time

Clock = Callable[[], int]


@dataclass(frozen=True)
class Auth:
    """The dependencies routes use: ``principal`` (anyone with a valid key), ``require_reader``
    (same, for reading routes: they filter by the principal), ``require_admin``."""

    principal: Callable[..., Awaitable[Principal]]
    require_reader: Callable[..., Awaitable[Principal]]
    require_admin: Callable[..., Awaitable[Principal]]


def build_auth(state: "ApiState", clock: Clock = lambda: int(time.time())) -> Auth:

    bearer = HTTPBearer(auto_error=False, description="An API key, or the admin token")

    def unauthorized(detail: str, error: str = "unauthorized",
                     hint: str = "send 'Authorization: Bearer <your API key>'") -> ApiError:
        return ApiError(401, error, detail, hint)

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None:
            raise unauthorized("no bearer token")
        token = credentials.credentials
        if state.admin_token and secrets.compare_digest(token.encode(), state.admin_token.encode()):
            return Principal.root()
        if len(token) > 200:
            raise unauthorized("unknown bearer token")
        assert state.reader is not None
        tables = PartyTables(state.reader)
        key = await tables.key_for_token(token)
        if key is None:
            raise unauthorized("unknown bearer token" + (
                "" if state.admin_token else " (and this backend has no admin token configured)"))
        now = clock()
        refusal = key.refusal(now)
        if refusal is not None:
            error = "key-revoked" if key.revoked is not None and key.revoked <= now else "key-expired"
            raise unauthorized(refusal, error, "ask the operator for a new key (`meterchain "
                               "backend access key-create`), or use the key that replaced it")
        if key.kind is KeyKind.AUDITOR:
            grant = await tables.grant(key.subject)
            if grant is None or grant.expires <= now:
                when = "" if grant is None else f" at {human_time(grant.expires)}"
                raise ApiError(403, "grant-expired", f"the auditor grant {key.subject} of key "
                               f"{key.id} has expired{when}", "ask the operator for a new grant")
        if key.last_used is None or key.last_used <= now - 60:
            assert state.writer is not None
            async with state.write_lock:
                await PartyTables(state.writer).touch_key(key.id, now)
        return Principal.of_key(key)

    async def require_reader(who: Annotated[Principal, Depends(principal)]) -> Principal:
        return who

    async def require_admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not who.is_admin:
            raise ApiError(403, "forbidden",
                           f"this route needs an admin key; {who.key_id} is a {who.kind.value} key",
                           "use an admin key or the admin token")
        return who

    return Auth(principal, require_reader, require_admin)
