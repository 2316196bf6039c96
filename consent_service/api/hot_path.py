"""POST /v1/consent/checks answered without the framework's per-request machinery.

Platforms call this route before every generation, so it sets the service's
throughput. FastAPI's routing, dependency solving and response re-validation
cost about as much CPU as the decision, the audit row and the receipt together
(measured: bench/consent_check.py, README "HTTP on loopback"). The route stays
declared in routes_consent.py, for the OpenAPI schema and as the one endpoint
function; this middleware calls that same function after the same
authentication, route policy and body model, and maps domain errors through
the same function as the exception handler. Anything else (a body that is not
a valid check, a content type that is not JSON) goes down the normal stack, so
the answers are the framework's own; tests/test_api_checks.py compares the two.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.responses import Response

from consent_service.api.deps import Runtime, authenticate, authorize
from consent_service.api.errors import domain_error_response
from consent_service.api.routes_consent import consent_check
from consent_service.errors import DomainError
from consent_service.schemas import ConsentCheckRequest

PATH = "/v1/consent/checks"


class ConsentCheckHotPath:
    """ASGI middleware; install it inside BodyLimit, which caps and buffers the body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(reversed(scope["headers"]))  # a repeated header: the first wins, as in Starlette
        if not headers.get(b"content-type", b"application/json").startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        runtime: Runtime = scope["app"].state.runtime
        try:
            caller = await authenticate(runtime, headers.get(b"authorization", b"").decode("latin-1"))
            authorize(runtime, caller, obj="consent_check", act="create")
            body = await _read_body(receive)
            try:
                request = ConsentCheckRequest.model_validate_json(body)
            except ValidationError:
                # A bad body is rare: let FastAPI word the 422 exactly as on every other route.
                await self.app(scope, _replay(body), send)
                return
            result = await consent_check(request, runtime, caller)
            response: Response = Response(result.model_dump_json(), media_type="application/json")
        except DomainError as exc:
            response = domain_error_response(exc)
        await response(scope, receive, send)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
