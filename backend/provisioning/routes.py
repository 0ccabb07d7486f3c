"""HTTP routes for commissioning: issue installer tokens (admin), provision a gateway (token).

``POST /api/v1/installer-tokens`` answers the token once, with the command an installer runs on
the gateway and that command as a QR code (SVG) for the utility's page. ``POST
/api/v1/provision`` takes the token in its body (it is the only credential a fresh gateway has)
and answers the device id, broker URL and login, and the log's public key.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from meterchain.backend.access.model import Principal
from meterchain.backend.api.errors import ApiError
from meterchain.backend.api.state import ApiState
from meterchain.backend.log.proofs import inclusion_proof
from meterchain.backend.provisioning.tokens import (
    DEFAULT_TOKEN_TTL,
    MAX_TOKEN_TTL,
    IssuedToken,
    ProvisioningError,
    ProvisioningSettings,
    ProvisionRequest,
    Scope,
    issue_token,
    provision,
)
from meterchain.contract import merkle
from meterchain.contract.reading import DEVICE_ID_RE, MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field

DEVICE_PATTERN = f"^{DEVICE_ID_RE.pattern}$"



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TokenRequest(_Strict):
    scope: str = Field(max_length=80, description="utility:ID or community:ID")
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_TOKEN_TTL)] = DEFAULT_TOKEN_TTL
    note: str = Field(default="", max_length=200, description="e.g. the installer's name or job")


class TokenOut(BaseModel):
    token: str = Field(description="Shown once; the backend keeps only its hash")
    scope: str
    expires: int
    command: str = Field(description="What the installer runs on the gateway")
    qr_svg: str = Field(description="The command as a QR code (SVG)")


class ProvisionIn(_Strict):
    token: str = Field(min_length=1, max_length=200)
    public_key: str = Field(min_length=1, max_length=4096,
                            description="P-256 SubjectPublicKeyInfo: PEM or base64 DER")
    identity: str = Field(min_length=1, max_length=128, description="The gateway's machine id")
    device: str | None = Field(default=None, max_length=64,
                               description="Requested device id (default: from the identity)")
    next_seq: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)] = Field(
        default=1, description="The gateway's next sequence number (a rotation starts there)")


class InclusionOut(BaseModel):
    leaf_index: int
    tree_size: int
    checkpoint: str = Field(description="The signed checkpoint the proof is against")
    proof: list[str] = Field(description="RFC 9162 inclusion proof, base64 hashes")


class ProvisionOut(BaseModel):
    device: str
    event: str = Field(description="enrol (new gateway) or rotate (re-provisioned)")
    key_id: str
    valid_from: int
    scope: str
    broker_url: str
    broker_username: str
    broker_password: str = Field(description="Shown once; the backend keeps only its hash")
    log_public_key: str
    witness_policy: str | None = None
    control_key: str = Field("", description="The backend's control key (name+hash+base64): "
                             "the gateway verifies every ack with it; empty if none is set")


def provision_command(public_url: str, token: str) -> str:
    return f"meterchain agent provision --backend {public_url or 'URL'} --token {token}"


def qr_svg(text: str) -> str:
    """An SVG QR code of ``text`` (segno, error correction M)."""
    import segno  # deliberately here: ~60 ms that every `meterchain` start would pay otherwise

    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="svg", scale=4, xmldecl=False)
    return out.getvalue().decode()


def token_out(issued: IssuedToken, public_url: str) -> TokenOut:
    command = provision_command(public_url, issued.token)
    return TokenOut(token=issued.token, scope=str(issued.scope), expires=issued.expires,
                    command=command, qr_svg=qr_svg(command))


def provisioning_router(state: ApiState, require_admin: Callable[..., Awaitable[Principal]],
                        settings: ProvisioningSettings) -> APIRouter:
    """The commissioning routes over the API's writer connection."""

    router = APIRouter(prefix="/api/v1", tags=["provisioning"])

    def refused(exc: ProvisioningError) -> ApiError:
        return ApiError(exc.status, exc.check, str(exc), exc.hint)

    @router.post("/installer-tokens", status_code=201, response_model=TokenOut,
                 dependencies=[Depends(require_admin)])
    async def new_installer_token(body: TokenRequest) -> TokenOut:
        """A one-time installer token for a utility or community (shown once, with a QR code)."""
        assert state.writer is not None
        try:
            scope = Scope.parse(body.scope)
            async with state.write_lock:
                issued = await issue_token(state.writer, scope, int(time.time()),
                                           ttl=body.ttl_seconds, note=body.note)
        except ProvisioningError as exc:
            raise refused(exc) from None
        return token_out(issued, settings.public_url)

    @router.post("/provision", status_code=201, response_model=ProvisionOut)
    async def provision_gateway(body: ProvisionIn) -> ProvisionOut:
        """Enrol (or re-key) a gateway with an installer token; answers its broker login once."""
        assert state.writer is not None
        if not settings.broker_url:
            # Not a server fault: this backend simply offers no provisioning (a 404, like any
            # route a deployment does not serve), and the body says how to turn it on.
            raise ApiError(404, "not-configured", "this backend does not provision gateways",
                           "set gateway_broker_url in the backend's config")
        request = ProvisionRequest(body.token, body.public_key.encode(), body.identity,
                                   body.device, body.next_seq)
        try:
            async with state.write_lock:
                done = await provision(state.writer, request, int(time.time()), settings)
        except ProvisioningError as exc:
            raise refused(exc) from None
        return ProvisionOut(
            device=done.device, event=done.leaf.event.value, key_id=done.leaf.key_id.hex(),
            valid_from=done.leaf.valid_from, scope=str(done.scope), broker_url=settings.broker_url,
            broker_username=done.broker_username, broker_password=done.broker_password,
            log_public_key=str(state.verifier), witness_policy=settings.witness_policy,
            control_key=settings.control_key)

    @router.get("/devices/{device}/readings/{seq}/inclusion", response_model=InclusionOut,
                tags=["log"])
    async def reading_inclusion(
        device: Annotated[str, Path(pattern=DEVICE_PATTERN)],
        seq: Annotated[int, Path(ge=1, le=MAX_SAFE_INT)],
        leaf_hash: Annotated[str, Query(pattern="^[0-9a-f]{64}$",
                                        description="SHA-256 leaf hash of the message, hex")],
    ) -> InclusionOut:
        """Where a reading sits in the log, for whoever holds it (a gateway checking itself).

        No token: the answer is given only to a caller that sends the reading's own leaf hash,
        so it tells nobody anything about a reading they do not already have.
        """
        assert state.reader is not None
        row = await state.reader.reading(device, seq)
        if row is None or merkle.leaf_hash(row.message).hex() != leaf_hash:
            raise ApiError(404, "not-found", f"no such reading {device}#{seq} with that leaf hash",
                           "wait for the backend's ack, then ask again")
        checkpoint = await state.reader.latest_checkpoint()
        if checkpoint is None or row.leaf_index is None or row.leaf_index >= checkpoint.size:
            raise ApiError(409, "not-sealed", f"{device}#{seq} is stored, not sealed yet",
                           "retry after the next seal (a few seconds)")
        proof = await inclusion_proof(state.reader, row.leaf_index, checkpoint.size)
        return InclusionOut(leaf_index=row.leaf_index, tree_size=checkpoint.size,
                            checkpoint=checkpoint.note,
                            proof=[base64.b64encode(h).decode() for h in proof])

    return router
