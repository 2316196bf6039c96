"""Every route in the OpenAPI schema, fed malformed and out-of-range input by every kind of caller.

The contract: a bad request gets a 4xx with an error body, never a 500. The inputs
come from each operation's own schema (each field in turn set to an edge value of its
type), plus bodies that are not JSON or not the right JSON, so a route added later is
covered without editing this file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

from tests.conftest import minor_birth_date

STRINGS = ["alice", "nobody", "", "x" * 2_000, "e\u0301", "\x00", "' OR 1=1 --", "2999-01-01T00:00:00Z"]
INTEGERS = [0, -1, 1, 2**63, -(2**63) - 1, 10**30]
PATH_STRINGS = ["alice", "nobody", "x" * 300, "%00", "%C3%A9", "..%2F..", "1"]
RAW_BODIES = [b"", b"{", b"[]", b"null", b'"text"', b"\xff\xfe", b"[" * 2_000 + b"]" * 2_000]
CALLERS = ["alice", "kid", "root", "plat", "auditor", None]


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _edges(schema: dict, spec: dict, depth: int = 0) -> list[Any]:
    """Values at and past the edges of what the schema admits, including the wrong type."""
    schema = _resolve(schema, spec)
    if "anyOf" in schema:
        return [None] + [v for option in schema["anyOf"] for v in _edges(option, spec, depth)]
    if "enum" in schema:
        return [*schema["enum"], "not-a-member"]
    kind = schema.get("type")
    if kind == "string":
        return [*STRINGS, 7]
    if kind in ("integer", "number"):
        return [*INTEGERS, 1.5, "7"]
    if kind == "boolean":
        return [True, "yes"]
    if kind == "array":
        items = _edges(schema.get("items", {}), spec, depth + 1)[:3]
        return [[], items, items[:1] * 1_000, "not-a-list"]
    if kind == "object" or "properties" in schema:
        return [{}] if depth > 1 else [*list(_bodies(schema, spec, depth + 1))[:8], "not-an-object"]
    return [None, "x", 1]


def _bodies(schema: dict, spec: dict, depth: int = 0) -> Iterator[Any]:
    """A body of first values, then each field in turn at each of its edges, then random mixes."""
    props = _resolve(schema, spec).get("properties", {})
    edges = {name: _edges(s, spec, depth) for name, s in props.items()}
    base = {name: values[0] for name, values in edges.items()}
    yield base
    for name, values in edges.items():
        for value in values:
            yield {**base, name: value}
    rng = random.Random(1)
    for _ in range(10):
        yield {name: rng.choice(values) for name, values in edges.items()}


def _operations(spec: dict) -> Iterator[tuple[str, str, dict]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _urls(path: str, operation: dict, spec: dict) -> list[str]:
    params = [p for p in operation.get("parameters", []) if p["in"] == "path"]
    urls = [path]
    for param in params:
        kind = _resolve(param.get("schema", {}), spec).get("type")
        values = [str(v) for v in INTEGERS] + ["1.5", "x"] if kind == "integer" else PATH_STRINGS
        urls = [u.replace("{" + param["name"] + "}", v) for u in urls for v in values]
    return urls


def _queries(operation: dict, spec: dict) -> list[dict]:
    queries: list[dict] = [{}]
    for param in operation.get("parameters", []):
        if param["in"] == "query":
            for value in _edges(param.get("schema", {}), spec):
                if value is not None and not isinstance(value, (list, dict)):
                    queries.append({param["name"]: value})
    return queries


def test_no_route_answers_bad_input_with_a_server_error(api):
    api.user_with_cameo("alice")
    api.user_with_cameo("bob", audience="everyone")
    api.principal("kid", birth_date=minor_birth_date())
    spec = api.client.app.openapi()
    failures, sent, statuses = [], 0, set()
    for method, path, operation in _operations(spec):
        schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        bodies = [json.dumps(b).encode() for b in _bodies(schema, spec)] + RAW_BODIES if schema else [None]
        urls = _urls(path, operation, spec)
        cases = [(url, {}, None) for url in urls]
        cases += [(urls[0], query, None) for query in _queries(operation, spec)[1:]]
        cases += [(urls[0], {}, body) for body in bodies]
        for url, query, body in cases:
            for who in CALLERS:
                headers = {"Content-Type": "application/json", **(api.auth(who) if who else {})}
                try:
                    r = api.client.request(method, url, params=query, content=body, headers=headers)
                except Exception as exc:  # the test client re-raises what the app did not handle
                    failures.append((method, url[:80], query, who, (body or b"")[:80], repr(exc)[:200]))
                    continue
                sent += 1
                statuses.add(r.status_code)
                if r.status_code >= 500:
                    failures.append((method, url[:80], query, who, (body or b"")[:80], r.text[:200]))
                elif r.status_code >= 400:
                    assert "error" in r.json() or "detail" in r.json(), (method, url, r.text[:200])
    import sys

    print(
        "\n".join(sorted({f"{f[0]} {f[1][:50]} {f[2]} {f[4][:70]!r} {f[5][:90]}" for f in failures})),
        file=sys.stderr,
    )
    assert not failures, failures[:20]
    # The sweep reached past authentication and validation, not only 401s and 422s.
    assert {200, 401, 403, 404, 422} <= statuses, statuses
    assert sent > 3_000


def test_nul_is_refused_in_path_query_and_body_but_a_literal_backslash_u0000_is_text(api):
    api.user_with_cameo("alice")
    for method, url, body in [
        ("GET", "/v1/cameos/al%00ice", None),
        ("GET", "/v1/audit/events?cameo=%00", None),
        ("PATCH", "/v1/cameos/alice", b'{"instructions": "calm \\u0000"}'),
        ("PATCH", "/v1/cameos/alice", b'{"instructions": "calm \\\\\\u0000"}'),  # \\ then \u0000
    ]:
        r = api.call(method, url, "alice", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "nul_character", (url, body, r.text)
    # An escaped backslash followed by the text "u0000" holds no NUL, and is stored as sent.
    r = api.call("PATCH", "/v1/cameos/alice", "alice", json={"instructions": "literal \\u0000"})
    assert r.status_code == 200, r.text
    assert api.call("GET", "/v1/cameos/alice", "alice").json()["instructions"] == "literal \\u0000"
