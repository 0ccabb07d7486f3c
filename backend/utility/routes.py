"""HTTP routes for utilities: signed batches (JSON or CBOR), OCMF exports, fleet health (JSON and
a page) and webhooks with their dead-letter list. Every route resolves the caller through the one
auth dependency and sees only its own metering points (the same windows as every reading route);
an id outside the caller's scope is answered like an unknown one.
"""

# No `from __future__ import annotations`: FastAPI must resolve the local Annotated aliases.

import html
import inspect
import secrets
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from meterchain.backend.access.auth import Auth
from meterchain.backend.access.model import DEVICE_PATTERN, ID_PATTERN, KeyKind, Principal
from meterchain.backend.access.tables import PartyTables
from meterchain.backend.api.errors import ApiError, not_visible
from meterchain.backend.api.limits import RequestLimits
from meterchain.backend.api.state import ApiState
from meterchain.backend.store import SqliteStore
from meterchain.backend.utility.batches import MAX_PAGE, BatchUnavailable, build_batch
from meterchain.backend.utility.tables import Delivery, DeliveryState, OcmfRow, UtilityTables, Webhook
from meterchain.contract.humantime import human_ago, human_duration, human_interval, human_time
from meterchain.contract.reading import MAX_SAFE_INT
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

CBOR = "application/cbor"
SafeInt = Annotated[int, Query(ge=0, le=MAX_SAFE_INT)]
Device = Annotated[str, Path(pattern=DEVICE_PATTERN, description="Device id")]
Point = Annotated[str, Path(pattern=ID_PATTERN, description="Metering point id")]
HookId = Annotated[str, Path(pattern=r"^wh-[0-9a-f]{12}$", description="A webhook's id")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]
Start = Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="Time >= start (UTC s)")]
End = Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="Time < end (UTC s)")]
Limit = Annotated[int, Query(ge=1, le=10_000)]
#: A gateway that sent no status for this long is "silent" (status every 60 s by default).
DEFAULT_SILENT_AFTER = 600
GAP_WINDOW = 7 * 86_400


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BatchEntryOut(BaseModel):
    index: int = Field(description="Leaf index in the log")
    device: str
    seq: int
    point: str | None = Field(description="Metering point the reading belongs to")
    message: str = Field(description="The signed message, base64 (CBOR [reading, signature])")
    proof: list[str] = Field(description="Inclusion proof to checkpoint `new`, base64 hashes")


class KeyEntryOut(BaseModel):
    index: int
    leaf: str = Field(description="Device leaf (CBOR), base64")
    proof: list[str]


class AssignmentEntryOut(BaseModel):
    index: int = Field(description="Leaf index of the assignment leaf")
    salt: str = Field(description="The leaf's 32-byte salt, base64 (docs/format.md §5.1)")
    fields: str = Field(description="The committed binding (CBOR: point, device, meter, from, to), base64")
    proof: list[str] = Field(description="Inclusion proof to checkpoint `new`, base64 hashes")


class BatchOut(BaseModel):
    """One page of a signed batch; docs/utility-guide.md says how to verify it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "t": "meterchain/utility-batch/v2", "from": 2, "to": 4,
        "old": "log.example\n2\nepwD+26otQ9c1ZeLSgqL9EqDJqZIZSnLhcPO37XqaEU=\n\n— log.example …\n",
        "new": "log.example\n4\n…\n", "consistency": ["KGuhl77kHWC9A+yVzmNCiHHxRk2ZuX3b4Te5A1fpu4A="],
        "entries": [{"index": 2, "device": "gw-0001", "seq": 1, "point": "DE0001", "message":
                     "glj…", "proof": ["…"]}],
        "keys": [{"index": 0, "leaf": "p2F0…", "proof": ["…"]}],
        "assignments": [{"index": 1, "salt": "…", "fields": "qGF0…", "proof": ["…"]}],
        "cursor": 2, "next": None}]})
    t: str
    from_: int = Field(alias="from")
    to: int
    old: str | None = Field(description="Signed checkpoint at size `from` (null when 0)")
    new: str = Field(description="Signed checkpoint at size `to`")
    consistency: list[str] = Field(description="RFC 9162 consistency proof from `from` to `to`")
    entries: list[BatchEntryOut]
    keys: list[KeyEntryOut]
    assignments: list[AssignmentEntryOut] = Field(description=(
        "Openings of the meter bindings the entries count under: the `point-assigned` check"))
    cursor: int = Field(description="First leaf index this page covers")
    next: int | None = Field(description="Cursor of the next page; null: this was the last")


class OcmfOut(BaseModel):
    device: str
    seq: int
    meter: str
    time: int = Field(description="The reading's interval end (UTC s)")
    point: str | None
    record: str = Field(description="The OCMF record verbatim, as the gateway signed it")


class MeterHealthOut(BaseModel):
    meter: str
    last_read: int | None = Field(description="Interval end of the newest stored reading")
    reported_last_read: int | None = Field(description="The gateway's own newest, from its status")
    drift: int | None = Field(description="Meter clock minus gateway clock, seconds")
    gaps: list[list[int]] = Field(description="[from, to) holes in the stored readings")


class GatewayHealthOut(BaseModel):
    device: str
    last_seen: int | None
    silent: bool
    firmware: str | None
    uptime: int | None
    backlog: int | None = Field(description="Readings in the gateway's outbox, not yet acked")
    quarantined: int | None
    meters: list[MeterHealthOut]


class AlertOut(BaseModel):
    device: str
    kind: Literal["silent", "never-seen"]
    since: int | None
    detail: str


class FleetOut(BaseModel):
    now: int
    silent_after: int
    gateways: list[GatewayHealthOut]
    alerts: list[AlertOut]


class WebhookIn(_Strict):
    url: str = Field(pattern=r"^(https?|mqtts?)://[^\s]{1,2000}$", max_length=2048,
                     examples=["https://utility.example/meterchain-hook"],
                     description="http(s): POST announcements; mqtt(s)://[user:pass@]host[:port]/"
                     "prefix: publish each sealed batch itself (CBOR pages) to that broker")
    utility: str | None = Field(default=None, pattern=ID_PATTERN,
                                description="Only for the admin: whose webhook it is")


class WebhookOut(BaseModel):
    id: str
    utility: str
    url: str
    after_batch: int = Field(description=(
        "The announcement cursor: the index of the next sealed batch this webhook will consider. "
        "At creation it is the batch after the newest one sealed (earlier batches are never announced); "
        "as batches are sealed the dispatcher queues a delivery for each one that holds your readings "
        "and moves the cursor past it, also past batches without your readings. So a later GET shows a "
        "larger value: batches below it are dealt with (see the deliveries), batches from it on are to come."))
    created: int = Field(description="When the webhook was created, Unix seconds (UTC)")


class NewWebhookOut(WebhookOut):
    secret: str = Field(description="HMAC-SHA256 key of the signature header; shown only now")


class DeliveryOut(BaseModel):
    id: int
    idempotency_key: str
    event: str
    state: DeliveryState
    attempts: int = Field(description="Attempts so far (0 until the first; a replay starts over)")
    next_attempt: int = Field(description="When the next attempt is due, Unix seconds (UTC)")
    last_error: str = Field(description="Why the last attempt failed; empty if none failed")
    created: int = Field(description="When the delivery was queued, Unix seconds (UTC)")
    finished: int | None = Field(description="When it was delivered or became dead, Unix seconds (UTC)")
    payload: str = Field(description="The JSON body sent")


def _hook_out(h: Webhook) -> WebhookOut:
    return WebhookOut(id=h.id, utility=h.utility, url=h.url, after_batch=h.after_batch,
                      created=h.created)


def _delivery_out(d: Delivery) -> DeliveryOut:
    return DeliveryOut(id=d.id, idempotency_key=d.idempotency_key, event=d.event,
                       state=d.state, attempts=d.attempts, next_attempt=d.next_attempt,
                       last_error=d.last_error, created=d.created, finished=d.finished,
                       payload=d.payload.decode())


async def fleet_health(store: SqliteStore, who: Principal, silent_after: int, now: int) -> FleetOut:
    """Per gateway the principal may see: last seen, backlog, drift and gaps of each meter, and alerts
    for gateways silent beyond ``silent_after`` seconds (the API, the /fleet page and the console)."""
    tables = UtilityTables(store)
    gateways, alerts = [], []
    for g in await tables.gateways(who):
        stored = await tables.stored_meters(g.device)
        reported = {m.meter: m for m in await tables.gateway_meters(g.device)}
        gaps: dict[str, list[list[int]]] = {}
        newest = max(stored.values(), default=now)
        for meter, start, stop in await tables.gaps(g.device, newest - GAP_WINDOW):
            gaps.setdefault(meter, []).append([start, stop])
        visible = await tables.visible_meters(who, g.device)
        meters = [
            MeterHealthOut(meter=m, last_read=stored.get(m),
                           reported_last_read=reported[m].last_read if m in reported else None,
                           drift=reported[m].drift if m in reported else None,
                           gaps=gaps.get(m, []))
            for m in sorted(set(stored) | set(reported))
            if visible is None or m in visible
        ]
        silent = g.last_seen is None or now - g.last_seen > silent_after
        gateways.append(GatewayHealthOut(
            device=g.device, last_seen=g.last_seen, silent=silent, firmware=g.firmware,
            uptime=g.uptime, backlog=g.outbox_depth, quarantined=g.quarantined, meters=meters))
        if g.last_seen is None:
            alerts.append(AlertOut(device=g.device, kind="never-seen", since=None,
                                   detail="enrolled, but no status message has arrived"))
        elif silent:
            alerts.append(AlertOut(device=g.device, kind="silent", since=g.last_seen,
                                   detail=f"no status for {human_duration(now - g.last_seen)} "
                                   f"(threshold {human_duration(silent_after)})"))
    return FleetOut(now=now, silent_after=silent_after, gateways=gateways, alerts=alerts)


def utility_router(state: "ApiState", auth: Auth) -> APIRouter:
    """Signed batches, OCMF, fleet health and webhooks, all behind ``auth.principal``."""

    router = APIRouter(tags=["utilities"])
    Caller = Annotated[Principal, Depends(auth.principal)]

    def store() -> SqliteStore:
        assert state.reader is not None
        return state.reader

    # ------------------------------------------------------------------ signed batches

    @router.get("/api/v1/utility/batch", response_model=BatchOut, response_model_by_alias=True,
                responses={200: {"content": {CBOR: {"schema": {"type": "string",
                                                                "format": "binary"}}}}})
    async def utility_batch(
        request: Request, who: Caller,
        from_: Annotated[int, Query(alias="from", ge=0, le=MAX_SAFE_INT,
                                    description="Tree size of the older checkpoint (0: start)")] = 0,
        to: Annotated[int | None, Query(ge=1, le=MAX_SAFE_INT,
                                        description="Tree size of the newer checkpoint "
                                        "(default: the newest)")] = None,
        cursor: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INT,
                                            description="First leaf index (from `next`)")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
        format: Annotated[Literal["json", "cbor"] | None, Query(
            description="cbor: deterministic CBOR (or send Accept: application/cbor)")] = None,
    ) -> Response | BatchOut:
        """Every reading of your metering points that checkpoint `to` added to checkpoint `from`
        (leaf indices from <= i < to), each with its inclusion proof, plus the consistency proof
        and both signed checkpoints; page on with `cursor` = `next`."""
        try:
            batch = await build_batch(store(), who, size_from=from_, size_to=to, cursor=cursor,
                                      limit=limit)
        except BatchUnavailable as exc:  # no such (from, to, cursor): like an unknown id
            raise ApiError(404, exc.check, str(exc),
                           "use tree sizes of checkpoints you hold or GET /api/v1/batches lists; "
                           "a cursor comes from `next` of the previous page") from None
        wants_cbor = format == "cbor" or (format is None and CBOR in request.headers.get("accept", ""))
        if wants_cbor:
            return Response(batch.to_cbor(), media_type=CBOR)
        return BatchOut.model_validate(batch.to_json_obj())

    # ---------------------------------------------------------------------------- OCMF

    def ocmf_out(rows: Iterable[OcmfRow]) -> list[OcmfOut]:
        return [OcmfOut(device=r.device, seq=r.seq, meter=r.meter, time=r.end,
                        point=r.metering_point, record=r.record.decode("ascii")) for r in rows]

    @router.get("/api/v1/metering-points/{point}/ocmf", response_model=list[OcmfOut])
    async def point_ocmf(who: Caller, point: Point, start: Start = 0, end: End = MAX_SAFE_INT,
                         limit: Limit = 1000) -> list[OcmfOut]:
        """The OCMF records of a metering point's readings, verbatim (a gateway signature, not a
        calibration-law meter signature: docs/format.md §12), oldest first."""
        if not await PartyTables(store()).point_visible(who, point):
            raise not_visible(f"metering point {point}")
        return ocmf_out(await UtilityTables(store()).ocmf_records(
            who, point=point, start=start, end=end, limit=limit))

    @router.get("/api/v1/devices/{device}/ocmf", response_model=list[OcmfOut])
    async def device_ocmf(who: Caller, device: Device, start: Start = 0, end: End = MAX_SAFE_INT,
                          limit: Limit = 1000) -> list[OcmfOut]:
        """A gateway's OCMF records, verbatim; a scoped key sees those of its metering points."""
        if not who.is_admin and not await PartyTables(store()).device_visible(who, device):
            raise not_visible(f"device {device}")
        return ocmf_out(await UtilityTables(store()).ocmf_records(
            who, device=device, start=start, end=end, limit=limit))

    # --------------------------------------------------------------------- fleet health

    async def fleet(who: Principal, silent_after: int) -> FleetOut:
        return await fleet_health(store(), who, silent_after, int(time.time()))

    SilentAfter = Annotated[int, Query(ge=1, le=MAX_SAFE_INT,
                                       description="Seconds without status before an alert")]

    @router.get("/api/v1/fleet", response_model=FleetOut)
    async def fleet_json(who: Caller, silent_after: SilentAfter = DEFAULT_SILENT_AFTER) -> FleetOut:
        """Per gateway of your metering points: last seen, backlog, drift, gaps in each meter's
        readings (the 7 days up to its newest reading), and alerts for gateways silent beyond ``silent_after``."""
        return await fleet(who, silent_after)

    # A page for people, not an API operation (that is /api/v1/fleet): left out of the OpenAPI.
    @router.get("/fleet", response_class=HTMLResponse, include_in_schema=False)
    async def fleet_page(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
        silent_after: SilentAfter = DEFAULT_SILENT_AFTER,
    ) -> Response:
        """Fleet health as a page (same data as /api/v1/fleet) for a bearer key; a browser without
        one is sent to the operator console's fleet view (/console), which has a sign-in."""
        if credentials is None:
            return RedirectResponse(f"/console?silent_after={silent_after}", status_code=303)
        who = await auth.principal(credentials)
        return HTMLResponse(_fleet_html(await fleet(who, silent_after)))

    # ------------------------------------------------------------------------ webhooks

    def owner(who: Principal, utility: str | None) -> str:
        if who.is_admin:
            if utility is None:
                raise ApiError(403, "forbidden", "webhooks belong to a utility: name it",
                               'send {"url": ..., "utility": "<utility id>"}')
            return utility
        if who.kind is not KeyKind.UTILITY:
            raise ApiError(403, "forbidden", f"webhooks belong to utilities; this is a "
                           f"{who.kind.value} key", "use your utility's API key")
        if utility not in (None, who.id):
            raise ApiError(403, "forbidden", "a utility key manages only its own webhooks",
                           "leave out `utility`")
        return who.id

    async def own_hook(who: Principal, ident: str) -> Webhook:
        hook = await UtilityTables(store()).webhook(ident)
        if hook is None or (not who.is_admin and (who.kind is not KeyKind.UTILITY
                                                  or hook.utility != who.id)):
            raise not_visible(f"webhook {ident}")
        return hook

    @router.post("/api/v1/webhooks", status_code=201, response_model=NewWebhookOut)
    async def create_webhook(who: Caller, body: WebhookIn) -> NewWebhookOut:
        """Subscribe a URL to `batch.sealed` announcements of batches with your readings (from
        the next batch on). The secret signs every POST; it is shown only in this answer."""
        utility = owner(who, body.utility)
        if utility not in {u.id for u in await PartyTables(store()).utilities()}:
            raise ApiError(404, "not-found", f"no utility {utility}", "create the utility first")
        newest = await store().last_batch_index()
        hook = Webhook(id="wh-" + secrets.token_hex(6), utility=utility, url=body.url,
                       secret="whsec_" + secrets.token_urlsafe(32),
                       after_batch=0 if newest is None else newest + 1, created=int(time.time()))
        assert state.writer is not None
        async with state.write_lock:
            await UtilityTables(state.writer).add_webhook(hook)
        return NewWebhookOut(secret=hook.secret, **_hook_out(hook).model_dump())

    @router.get("/api/v1/webhooks", response_model=list[WebhookOut])
    async def list_webhooks(who: Caller) -> list[WebhookOut]:
        """Your webhooks (the admin: every utility's)."""
        if not who.is_admin and who.kind is not KeyKind.UTILITY:
            return []
        hooks = await UtilityTables(store()).webhooks(None if who.is_admin else who.id)
        return [_hook_out(h) for h in hooks]

    @router.delete("/api/v1/webhooks/{hook}", status_code=204, response_class=Response)
    async def delete_webhook(who: Caller, hook: HookId) -> Response:
        """Stop announcing to this webhook; pending deliveries become dead (still listed)."""
        found = await own_hook(who, hook)
        assert state.writer is not None
        async with state.write_lock:
            await UtilityTables(state.writer).delete_webhook(found.id, int(time.time()))
        return Response(status_code=204)

    @router.get("/api/v1/webhooks/{hook}/deliveries", response_model=list[DeliveryOut])
    async def deliveries(
        who: Caller, hook: HookId,
        state_: Annotated[Literal["pending", "delivered", "dead"] | None,
                          Query(alias="state", description="dead: the dead-letter list")] = None,
        after: Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="Delivery id cursor")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DeliveryOut]:
        """A webhook's deliveries by id; `state=dead` is the dead-letter list."""
        found = await own_hook(who, hook)
        rows = await UtilityTables(store()).deliveries(found.id, state_, after, limit)
        return [_delivery_out(d) for d in rows]

    @router.post("/api/v1/webhooks/{hook}/deliveries/{delivery}/replay",
                 response_model=DeliveryOut)
    async def replay(who: Caller, hook: HookId, delivery: DeliveryId) -> DeliveryOut:
        """Send a dead delivery again (its attempts start over), with the same idempotency key."""
        found = await own_hook(who, hook)
        assert state.writer is not None
        async with state.write_lock:
            tables = UtilityTables(state.writer)
            if not await tables.replay(found.id, delivery, int(time.time())):
                raise ApiError(409, "not-dead", f"delivery {delivery} of {found.id} is not in "
                               "the dead-letter list", "GET .../deliveries?state=dead")
            rows = await tables.deliveries(found.id, None, delivery - 1, 1)
        return _delivery_out(rows[0])

    return router


def _drift_text(drift: int | None) -> str:
    if drift is None:
        return "drift not reported"
    if drift == 0:
        return "clock in step"
    return f"meter clock {human_duration(abs(drift))} {'ahead' if drift > 0 else 'behind'}"


def _fleet_html(fleet: FleetOut) -> str:
    """The fleet for a person: local times with zone, spans in units, gaps as start – end."""
    e = html.escape
    rows = []
    for g in fleet.gateways:
        meters = "<br>".join(
            f"{e(m.meter)}: newest reading {e(human_time(m.last_read, never='none'))}, "
            f"{e(_drift_text(m.drift))}"
            + (", gaps " + "; ".join(e(human_interval(a, b)) for a, b in m.gaps) if m.gaps else ", no gaps")
            for m in g.meters)
        state = "silent" if g.silent else "ok"
        rows.append(
            f"<tr class='{state}'><td>{e(g.device)}</td><td>{state}</td>"
            f"<td>{e(human_ago(g.last_seen, fleet.now))}</td>"
            f"<td>{g.backlog if g.backlog is not None else 'not reported'}</td>"
            f"<td>{g.quarantined if g.quarantined is not None else 'not reported'}</td>"
            f"<td>{e(g.firmware or 'not reported')}</td><td>{meters}</td></tr>")
    alerts = "".join(f"<li>{e(a.device)}: {e(a.kind)}: {e(a.detail)}</li>" for a in fleet.alerts)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Fleet health</title>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<style>body{font-family:sans-serif}td,th{padding:.2em .6em;text-align:left}"
        "tr.silent{background:#fdd}</style></head><body><h1>Fleet health</h1>"
        f"<p>As of {e(human_time(fleet.now))}; a gateway is silent after "
        f"{e(human_duration(fleet.silent_after))} without a status message.</p>"
        f"<h2>Alerts</h2><ul id='alerts'>{alerts or '<li>none</li>'}</ul>"
        "<h2>Gateways</h2><table id='gateways'><tr><th>gateway</th><th>state</th>"
        "<th>last seen</th><th>backlog</th><th>quarantined</th><th>firmware</th><th>meters</th>"
        f"</tr>{''.join(rows)}</table></body></html>"
    )


class ErrorBody(BaseModel):
    """Every error: what was wrong (``error`` a stable code, ``detail``) and what to do."""

    error: str
    detail: str
    hint: str


_ERRORS = {
    "400": "The request is not possible as asked (see detail)",
    "401": "No, unknown, revoked or expired bearer token",
    "403": "The key may not do this",
    "404": "Unknown, or not visible to this key",
    "409": "Conflicts with the current state",
    "413": "Request body too large",
    "422": "A parameter or the body is malformed",
    "429": "Rate limit exceeded; see Retry-After",
}


def install_utilities(app: FastAPI, state: ApiState, auth: Auth, *,
                      max_body: int = 256 * 1024, rate: float = 50.0, burst: int = 200) -> None:
    """The utility routes, request limits, and error bodies documented on every operation."""
    app.include_router(utility_router(state, auth))
    app.add_middleware(RequestLimits, max_body=max_body, rate=rate, burst=burst)
    default_handler = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Framework errors under /api/ answer with the error body too (a body that is not JSON,
        a wrong method); a 405 names every method of the path in Allow (Starlette names one)."""
        if not request.url.path.startswith("/api/"):
            answer = default_handler(request, exc)  # a handler may be a plain function
            return await answer if inspect.isawaitable(answer) else answer
        if exc.status_code != 405:
            return JSONResponse({"error": f"http-{exc.status_code}", "detail": str(exc.detail),
                                 "hint": "see the OpenAPI description at /docs"},
                                status_code=exc.status_code, headers=exc.headers)
        allowed = sorted({m for route in app.router.routes
                          if isinstance(route, BaseRoute) and route.matches(request.scope)[0]
                          is not Match.NONE for m in (getattr(route, "methods", None) or ())})
        return JSONResponse({"error": "method-not-allowed",
                             "detail": f"{request.method} is not allowed on {request.url.path}",
                             "hint": f"use {', '.join(allowed) or 'another path'}"},
                            status_code=405, headers={"Allow": ", ".join(allowed)})
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema()
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code, description in _ERRORS.items():
                    responses[code] = {"description": description,
                                       "content": {"application/json": {"schema": ref}}}
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
