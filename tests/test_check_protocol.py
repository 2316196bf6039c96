"""Consent checks answered by uvicorn's protocol (api/check_protocol.py), on real sockets.

The protocol must answer exactly as the whole app does, byte for byte but for what
differs on every call, and leave everything else (pipelining, keep-alive, odd requests)
to uvicorn's ordinary path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from consent_service.api.check_protocol import CheckProtocol
from consent_service.app import create_app
from tests.test_api_checks import PARITY_STATUSES, _granted, parity_answers, parity_cases

Response = tuple[int, list[tuple[str, str]], bytes]


@contextmanager
def serving(settings: Any, http: Any, *, access_log: bool = False) -> Iterator[int]:
    """The app on a real uvicorn server in a thread, as consent-serve or plain uvicorn runs it."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, http=http, log_level="warning", access_log=access_log
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """How many checks the protocol answered itself."""
    answered: list[int] = []
    original = CheckProtocol._answer

    async def counting(self, *args):
        answered.append(1)
        await original(self, *args)

    monkeypatch.setattr(CheckProtocol, "_answer", counting)
    return answered


# The protocol never touches the database: one backend is enough.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
def test_the_protocol_answers_every_check_as_the_whole_app_does(api, counted):
    cases = parity_cases(api)
    in_process = parity_answers(api.client, cases)
    with serving(api.settings, CheckProtocol) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        assert parity_answers(c, cases) == in_process
    assert [status for status, _, _ in in_process] == PARITY_STATUSES
    # Answered by the protocol itself: every valid check with a JSON body and no query.
    assert len(counted) == 11


def _exchange(port: int, data: bytes, responses: int) -> list[Response]:
    """Send raw bytes on one connection and read that many responses off it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buffer, out = b"", []
        while len(out) < responses:
            while b"\r\n\r\n" not in buffer:
                chunk = s.recv(65536)
                assert chunk, f"connection closed after {len(out)} responses"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = [(n.lower(), v.strip()) for n, v in (line.split(":", 1) for line in lines)]
            length = 0 if status_line.split()[1] == "100" else int(dict(headers)["content-length"])
            while len(buffer) < length:
                chunk = s.recv(65536)
                assert chunk, "connection closed mid-body"
                buffer += chunk
            out.append((int(status_line.split()[1]), headers, buffer[:length]))
            buffer = buffer[length:]
        return out


def _post(token: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    lines = [
        f"POST /v1/consent/checks HTTP/{version}",
        "Host: test",
        f"Authorization: Bearer {token}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _comparable(response: Response) -> tuple[int, list[tuple[str, str]], Any]:
    status, headers, body = response
    parsed = json.loads(body)
    for volatile in ("check_id", "receipt", "receipt_expires_at"):
        if volatile in parsed:
            parsed[volatile] = bool(parsed[volatile])
    # The date changes by the second and the length with the receipt's ids: their place must not.
    same = [(n, "" if n in ("date", "content-length") else v) for n, v in headers]
    return status, same, parsed


CHECK = b'{"actor_handle": "bob", "cameo_handles": ["alice"]}'
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


def _wire_cases(token: str) -> list[tuple[bytes, int]]:
    """Raw requests, and how many responses each brings."""
    return [
        (_post(token, CHECK), 1),
        (_post(token, b'{"actor_handle": "bob", "cameo_handles": ["ghost"]}'), 1),
        (_post("csk_nope_nope", CHECK), 1),
        # Pipelined: the answers come in order, whichever path each request takes.
        (_post(token, CHECK) + _post(token, CHECK) + HEALTH + _post(token, b"{}") + _post(token, CHECK), 5),
        (HEALTH + _post(token, CHECK), 2),
        (_post(token, CHECK, "Expect: 100-continue"), 2),
        (_post(token, CHECK, "Connection: close"), 1),
        (_post(token, CHECK, version="1.0"), 1),
        (
            b"POST /v1/consent/checks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(CHECK):x}\r\n".encode()
            + CHECK
            + b"\r\n0\r\n\r\n",
            1,
        ),
    ]


@sqlite_only
def test_on_the_wire_the_protocol_answers_as_plain_uvicorn_does(api, counted):
    """Status, headers in order, and body: the same as uvicorn's own path, pipelining included."""
    _granted(api)
    token = api.keys["plat"]
    cases = _wire_cases(token)
    with serving(api.settings, "httptools") as port:
        plain = [[_comparable(r) for r in _exchange(port, data, n) if r[0] != 100] for data, n in cases]
    assert not counted
    with serving(api.settings, CheckProtocol) as port:
        fast = [[_comparable(r) for r in _exchange(port, data, n) if r[0] != 100] for data, n in cases]
    assert fast == plain
    assert [[status for status, _, _ in answers] for answers in plain] == [
        [200],
        [404],
        [401],
        [200, 200, 200, 422, 200],
        [200, 200],
        [200],
        [200],
        [200],
        [200],
    ]
    # The first three, and the first of the pipelined ones: a request behind another in flight,
    # and every odd one (100-continue, closing, HTTP/1.0, chunked), takes uvicorn's path.
    assert len(counted) == 4


@sqlite_only
def test_the_connection_closes_after_an_answer_when_the_client_asks(api):
    _granted(api)
    with (
        serving(api.settings, CheckProtocol) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as s,
    ):
        s.sendall(_post(api.keys["plat"], CHECK, "Connection: close"))
        data = b""
        while chunk := s.recv(65536):  # the server closes: recv returns b""
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nconnection: close\r\n" in data


@sqlite_only
def test_a_client_gone_mid_check_leaves_the_server_serving(api, counted):
    _granted(api)
    with serving(api.settings, CheckProtocol) as port:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(_post(api.keys["plat"], CHECK))
        [(status, _, _)] = _exchange(port, _post(api.keys["plat"], CHECK), 1)
    assert status == 200 and counted


@sqlite_only
def test_with_the_access_log_on_every_request_takes_uvicorns_path(api, counted):
    """An access log line needs the ASGI request: the protocol steps aside."""
    _granted(api)
    with serving(api.settings, CheckProtocol, access_log=True) as port:
        [(status, _, _)] = _exchange(port, _post(api.keys["plat"], CHECK), 1)
    assert status == 200 and not counted


def test_consent_serve_runs_uvicorn_with_the_protocol(monkeypatch):
    from consent_service import serve

    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append({"app": app, **kw}))
    serve.main(["--port", "8123", "--no-access-log", "--workers", "2"])
    serve.main([])
    assert [(s["http"], s["port"], s["access_log"], s["workers"]) for s in started] == [
        (CheckProtocol, 8123, False, 2),
        (CheckProtocol, 8000, True, None),  # None: uvicorn reads $WEB_CONCURRENCY, as its own CLI does
    ]
    assert started[0]["app"] == "consent_service.app:create_app" and started[0]["factory"]


@sqlite_only
def test_consent_serve_serves_checks(api):
    """The real entry point, in its own process, on the test's database and keys."""
    _granted(api)
    port = _free_port()
    env = {
        **os.environ,
        "CONSENT_DATABASE_URL": api.settings.resolved_database_url,
        "CONSENT_DATA_DIR": str(api.settings.data_dir),
    }
    cmd = [sys.executable, "-m", "consent_service.serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                [(status, _, body)] = _exchange(port, _post(api.keys["plat"], CHECK), 1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "consent-serve did not start"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)  # uvicorn shuts down gracefully, then re-raises the SIGTERM
    assert status == 200 and json.loads(body)["allowed"] is True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
