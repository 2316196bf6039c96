"""The one place where errors become HTTP responses, all with the same body shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from consent_service.errors import DomainError, http_status_for
from consent_service.schemas import ErrorResponse

log = logging.getLogger(__name__)

# Every route's documented errors: one body shape for all of them, 422 included (FastAPI would
# otherwise document its own validation body, which this service never sends). Errors are JSON
# on the plain-text routes too; FastAPI files the model under a route's own media type, hence
# the explicit entry.
ERROR_RESPONSES: dict[int | str, dict] = {
    "4XX": {
        "model": ErrorResponse,
        "description": "Refused: `error.code` names why (the README's error table lists every code).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
}


def error_response(status: int, code: str, message: str, details: dict | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "details": details or {}}}
    )


def domain_error_response(exc: DomainError) -> JSONResponse:
    response = error_response(http_status_for(exc), exc.code, exc.message, exc.details)
    if "retry_after_seconds" in exc.details:
        response.headers["Retry-After"] = str(int(exc.details["retry_after_seconds"]))
    return response


def install(app: FastAPI) -> None:
    """Register the handlers that map every error to a consistent JSON body."""

    @app.exception_handler(DomainError)
    async def domain(_: Request, exc: DomainError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Echoing `input` back could reflect huge or sensitive payloads; send locations only.
        problems = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()[:20]
        ]
        return error_response(
            422, "invalid_request", "request body or parameters are invalid", {"errors": problems}
        )

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)


def unexpected_error_response(exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error")
