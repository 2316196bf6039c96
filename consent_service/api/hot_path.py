"""POST /v1/consent/checks answered ahead of the framework's per-request machinery.

Platforms call this route before every generation, so it sets the service's
throughput. FastAPI's routing, dependency solving and response re-validation
cost about as much CPU as the decision, the audit row and the receipt together
(measured: bench/consent_check.py, bench/HTTP_LOG.md). The middleware
stack in front of the routes (Starlette's error and telemetry layers, the body
limit's buffering and replay) cost more still: without it, FastAPI's telemetry
check and the response re-validation, the event loop spent 0.886 of its CPU
per check (measured in-process). So ConsentServiceApp hands these requests
to ConsentCheckHotPath before any of that runs. The route stays declared in
routes_consent.py, for the OpenAPI schema and as the one endpoint function;
the hot path calls that same function after the same body limit, the same
authentication, route policy and body model, and maps errors through the same
functions as the exception handlers. Anything else (a body that is not a valid
check, a content type that is not JSON, a query string) goes down the whole
stack, so the answers are the framework's own; tests/test_api_checks.py
compares the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from consent_service.api.deps import Runtime, authenticate, authorize
from consent_service.api.errors import domain_error_response, unexpected_error_response
from consent_service.api.limits import read_body
from consent_service.api.routes_consent import consent_check
from consent_service.errors import DomainError
from consent_service.schemas import ConsentCheckRequest

PATH = "/v1/consent/checks"
_JSON_HEADERS = [(b"content-type", b"application/json")]
# An answer as it goes on the wire: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class ConsentServiceApp(FastAPI):
    """FastAPI, with consent checks served by `hot_path` when one is set."""

    hot_path: ConsentCheckHotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot_path
        if hot is not None and hot.takes(scope):
            await hot(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class ConsentCheckHotPath:
    """Serves the checks `takes` accepts; the rest go to the whole app, `app`'s framework stack."""

    def __init__(self, app: FastAPI, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    @staticmethod
    def takes(scope: Scope) -> bool:
        # With a query string the body limit's NUL check of the query applies: the whole stack.
        return (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            and not scope.get("query_string")
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(reversed(scope["headers"]))  # a repeated header: the first wins, as in Starlette
        if not json_body(headers):
            await FastAPI.__call__(self.app, scope, receive, send)
            return
        try:
            # The body limit first, as the body limit middleware refuses ahead of everything.
            body = await read_body(scope, receive, max_bytes=self.max_bytes, headers=headers)
        except DomainError as exc:
            await domain_error_response(exc)(scope, receive, send)
            return
        except Exception as exc:
            await unexpected_error_response(exc)(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        answer = await self.answer(headers, parse_check(body))
        if answer is None:
            # A bad body is rare: FastAPI words the 422 exactly as on every other route. Outside
            # the mapping in `answer`: its stack answers its own errors (and re-raises them once sent).
            await FastAPI.__call__(self.app, scope, _replay(body), send)
            return
        status, raw_headers, payload = answer
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    async def answer(
        self, headers: Mapping[bytes, bytes], request: ConsentCheckRequest | None
    ) -> Answer | None:
        """The answer to a check whose body was within the limit, `request` being that body
        parsed (`parse_check`). None where it was not a valid check and the caller may make
        one: the framework words that 422, as on every other route."""
        try:
            runtime: Runtime = self.app.state.runtime
            caller = await authenticate(runtime, headers.get(b"authorization", b"").decode("latin-1"))
            authorize(runtime, caller, obj="consent_check", act="create")
            if request is None:
                return None
            result = await consent_check(request, runtime, caller)
        except DomainError as exc:
            return _parts(domain_error_response(exc))
        except Exception as exc:
            return _parts(unexpected_error_response(exc))
        payload = result.__pydantic_serializer__.to_json(result)
        return 200, [(b"content-length", str(len(payload)).encode()), *_JSON_HEADERS], payload


def parse_check(body: bytes) -> ConsentCheckRequest | None:
    """The body as a check; None if it is not one."""
    try:
        return ConsentCheckRequest.model_validate_json(body)
    except ValidationError:
        return None


def json_body(headers: Mapping[bytes, bytes]) -> bool:
    """Whether the body is JSON as far as the hot path goes: a check sent as anything else gets
    the framework's own answer."""
    return headers.get(b"content-type", b"application/json").startswith(b"application/json")


def _parts(response: Response) -> Answer:
    return response.status_code, response.raw_headers, bytes(response.body)


def _replay(body: bytes) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
