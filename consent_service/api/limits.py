"""ASGI middleware that refuses request bodies over the configured size, and NUL characters."""

from __future__ import annotations

import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.requests import Request

from consent_service.api.errors import domain_error_response
from consent_service.errors import BodyTooLarge, DomainError, NulCharacter, VideoTooLarge

# A NUL inside a JSON string is always the escape \u0000; one preceded by an odd number
# of backslashes is a literal backslash and the text "u0000", which is fine.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class BodyLimit:
    """Reads at most `max_bytes` of body before the app sees any of it, then replays it.

    Bodies here are small JSON documents, so buffering them is cheap, and the
    app never has to cope with a stream cut off halfway.

    It also refuses a NUL character in the path, the query or a JSON body, for every
    route in one place: PostgreSQL raises on NUL in any text it is given, even in a
    lookup, which made a 500 of a handle like "%00" (found by tests/test_api_fuzz.py).
    """

    def __init__(
        self,
        app: Any,
        *,
        max_bytes: int,
        streamed: tuple[str, ...] = (),
        streamed_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Upload routes read their own bodies as streams, with their own cap.
        self.streamed = streamed
        self.streamed_prefixes = streamed_prefixes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        if "\x00" in path or b"%00" in query or b"\x00" in query:
            await self._refuse(
                scope, receive, send, NulCharacter("the path or query contains a NUL character")
            )
            return
        if path in self.streamed or path.startswith(self.streamed_prefixes):
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, max_bytes=self.max_bytes)
        except DomainError as exc:
            await self._refuse(scope, receive, send, exc)
            return
        if body is None:
            return  # client went away
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any, error: DomainError) -> None:
        await domain_error_response(error)(scope, receive, send)


async def read_body(
    scope: Mapping[str, Any], receive: Any, *, max_bytes: int, headers: Mapping[bytes, bytes] | None = None
) -> bytes | None:
    """The whole request body, None if the client went away first.

    Raises BodyTooLarge past `max_bytes` (declared or read) and NulCharacter for a NUL in JSON.
    `headers`: the request's headers as a mapping, where the caller has built one already.
    """
    if headers is None:
        headers = dict(reversed(scope.get("headers") or []))  # a repeated header: the first wins
    declared = headers.get(b"content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise BodyTooLarge(f"body over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge(f"body over {max_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if b"\\u0000" in body and _JSON_NUL.search(body):
        raise NulCharacter("the body contains a NUL character (\\u0000)")
    return body


@asynccontextmanager
async def spooled_upload(request: Request, *, cap: int, directory: Path | None = None) -> AsyncIterator[Path]:
    """The request body spooled to a file under a byte cap, never held in memory whole.

    The file is removed on exit unless the caller has moved it away.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise VideoTooLarge(f"uploads are limited to {cap} bytes")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".upload", delete=False) as tmp:
        path = Path(tmp.name)
        try:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise VideoTooLarge(f"uploads are limited to {cap} bytes")
                tmp.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
