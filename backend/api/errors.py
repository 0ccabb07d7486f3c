"""One place for API errors: every error body is ``{"error": check, "detail": what, "hint": what
to do}``, whatever route raised it, and validation errors get the same shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered as ``{"error": check, "detail": what, "hint": what to do}``."""

    def __init__(self, status: int, error: str, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.hint = status, error, detail, hint


#: The HTTP status of an error's check (MeterchainError.check) from the parties and settlement
#: tables; any other check is a 400.
CHECK_STATUS = {"invalid": 400, "not-found": 404, "exists": 409, "overlap": 409}


def not_visible(what: str, hint: str = "check the id; GET /api/v1/metering-points lists what "
                "this key may see") -> ApiError:
    """The 404 for what does not exist and for what this key may not see alike: a caller out of
    scope must not learn that it exists (docs/privacy.md)."""
    return ApiError(404, "not-found", f"no {what} visible to this key", hint)


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError` and request validation failures in the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail, "hint": exc.hint},
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "invalid-request", "detail": "; ".join(problems)[:1000],
             "hint": "see the OpenAPI description at /docs"},
            status_code=422,
        )
