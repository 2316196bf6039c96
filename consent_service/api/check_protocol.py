"""Consent checks answered inside uvicorn's HTTP protocol, ahead of its ASGI machinery.

api/hot_path.py already skips FastAPI's per-request work for checks, but uvicorn's own
still ran for each one: the ASGI scope, a task running a request-response cycle, the
receive and send messages with their header checks, and the head and body written in two
system calls. Measured on one machine under the benchmark's load (1,500 requests/s, the
same load generator): a do-nothing ASGI app cost 67-75 µs of server CPU a request, a
protocol writing the same answer itself 17-20 µs (bench/HTTP_LOG.md, fifteenth sitting).

So `CheckProtocol` serves, itself, the ordinary check: `POST /v1/consent/checks` on
HTTP/1.1 keep-alive, no query string, a JSON body of declared length within the limit that
is a valid check, with nothing else in flight on the connection. It answers through the
same `ConsentCheckHotPath.answer` (authentication, route policy, the check, the error
mapping) and writes the answer with uvicorn's default headers in one write. Anything else,
including every odd case (Expect: 100-continue, chunked bodies, pipelined requests, a bad
body, an access log to keep), goes down uvicorn's ordinary path to the whole app, so those
answers stay the framework's own. The app still serves checks correctly without this
protocol (plain `uvicorn`); consent_service/serve.py starts uvicorn with it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from consent_service.api.hot_path import PATH, ConsentCheckHotPath, ConsentServiceApp, json_body, parse_check
from consent_service.schemas import ConsentCheckRequest

_PATH = PATH.encode()


def _hot_path(app: Any) -> ConsentCheckHotPath | None:
    """The consent app's hot path, under whatever middleware uvicorn wrapped it in."""
    while app is not None and not isinstance(app, ConsentServiceApp):
        app = getattr(app, "app", None)
    return app.hot_path if app is not None else None


class CheckProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering ordinary consent checks itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An access log line per check would need the ASGI scope (and the proxy headers'
        # view of the client): with the access log on, checks take the ordinary path.
        self._hot = None if self.access_log else _hot_path(self.app)
        self._body: list[bytes] | None = None  # collecting a check's body
        self._headers: dict[bytes, bytes] = {}
        self._busy = False  # a check answered here is in flight
        self._close_after = False

    def on_headers_complete(self) -> None:
        if self._takes():
            self._body = []
            return
        super().on_headers_complete()

    def _takes(self) -> bool:
        hot, parser = self._hot, self.parser
        if (
            hot is None
            or self.url != _PATH
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or self.expect_100_continue
            or self._busy
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.limit_concurrency is not None
        ):
            return False
        headers = dict(reversed(self.headers))  # a repeated header: the first wins, as in Starlette
        declared = headers.get(b"content-length")
        if (
            declared is None
            or not declared.isdigit()
            or int(declared) > hot.max_bytes
            or b"transfer-encoding" in headers
            or not json_body(headers)
        ):
            return False
        self._headers = headers
        return True

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            super().on_body(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._body is None:
            super().on_message_complete()
            return
        body, self._body = b"".join(self._body), None
        request = _parse(body)
        if request is None:
            # Not a valid check (or a NUL to refuse as the body limit words it): the whole
            # app answers, in its order (the body limit, authentication, then the 422).
            self._hand_over(body)
            return
        self._busy = True
        task = self.loop.create_task(self._answer(self._headers, request))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _hand_over(self, body: bytes) -> None:
        """Give the request just parsed to uvicorn's ordinary path, as if it had taken it from the start."""
        super().on_headers_complete()
        if body:
            super().on_body(body)
        super().on_message_complete()

    async def _answer(self, headers: dict[bytes, bytes], request: ConsentCheckRequest) -> None:
        assert self._hot is not None
        try:
            answer = await self._hot.answer(headers, request)
        except BaseException:
            self.transport.close()  # cancelled at shutdown: no answer, so no kept-alive connection
            raise
        finally:
            self._busy = False
        assert answer is not None  # None only for a body that did not parse, and this one did
        status, raw_headers, payload = answer
        if not self.transport.is_closing():
            head = [STATUS_LINE[status]]
            for name, value in (*self.server_state.default_headers, *raw_headers):
                head += [name, b": ", value, b"\r\n"]
            if self._close_after:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", payload]
            self.transport.write(b"".join(head))
            if self._close_after:
                self.transport.close()
        self.on_response_complete()  # uvicorn's own: the next pipelined request, or the keep-alive timer

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if self._busy:
            # A request behind a check in flight waits its turn, as uvicorn queues pipelined ones.
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))
        else:
            super()._start_asgi_task(cycle, app)

    def shutdown(self) -> None:
        if self._busy:
            self._close_after = True  # answer the check in flight, then close
        else:
            super().shutdown()


def _parse(body: bytes) -> ConsentCheckRequest | None:
    if b"\\u0000" in body:
        return None  # the body limit's own check words its refusal
    try:
        return parse_check(body)
    except Exception:  # a parser callback must not raise: httptools would call it a bad request
        return None
