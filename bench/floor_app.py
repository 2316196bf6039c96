"""A do-nothing ASGI app: the floor under the HTTP benchmark on the machine it runs on.

It reads the request and answers 200 with a body the size of a consent check's answer, and
does nothing else. Served by the same uvicorn settings and driven by the same load generator
as the real service, its p99 is what the machine, the server and the load generator cost on
their own at that moment; the consent service's numbers are read against it.
"""

from __future__ import annotations

from typing import Any

_BODY = b'{"allowed":true,' + b'"x":"' + b"0" * 560 + b'"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
