"""Every route, tried by the wrong user, a platform and an auditor: each is denied."""

import pytest

from tests.conftest import minor_birth_date

# (method, path, json body) acting on alice's resources or on admin-only resources.
ROUTES = [
    ("GET", "/v1/cameos/alice", None),
    ("PATCH", "/v1/cameos/alice", {"audience": "everyone"}),
    ("DELETE", "/v1/cameos/alice", None),
    ("GET", "/v1/cameos/alice/grants", None),
    ("POST", "/v1/cameos/alice/grants", {"grantee_handle": "mallory", "purposes": ["generate"]}),
    ("DELETE", "/v1/cameos/alice/grants/bob", None),
    ("GET", "/v1/cameos/alice/blocks", None),
    ("POST", "/v1/cameos/alice/blocks", {"handle": "bob"}),
    ("DELETE", "/v1/cameos/alice/blocks/carl", None),
    ("POST", "/v1/cameos/alice/moderation", {"suspend": True}),
    ("POST", "/v1/principals", {"kind": "admin", "handle": "evil"}),
    ("POST", "/v1/principals/alice/keys", None),
    ("GET", "/v1/principals/alice/keys", None),
    ("DELETE", "/v1/principals/alice/keys/0000000000000000", None),
    ("POST", "/v1/users/kid/guardians", {"guardian_handle": "mallory"}),
    ("POST", "/v1/consent/checks", {"actor_handle": "mallory", "cameo_handles": ["alice"]}),
    ("GET", "/v1/audit/events", None),
]
USER_ROUTES = [
    ("POST", "/v1/cameos", None),
    ("GET", "/v1/follows", None),
    ("PUT", "/v1/follows/alice", None),
    ("DELETE", "/v1/follows/alice", None),
]


def _setup(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    api.principal("carl")
    api.principal("mallory")
    api.principal("kid", birth_date=minor_birth_date())
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    api.call("POST", "/v1/cameos/alice/blocks", "alice", json={"handle": "carl"})


def _send(api, who, method, path, body):
    return api.call(method, path, who, json=body) if body is not None else api.call(method, path, who)


# Which of the matrix callers a route legitimately admits (auditors read audit).
ALLOWED = {
    ("GET", "/v1/audit/events"): {"auditor"},
    (
        "POST",
        "/v1/consent/checks",
    ): {"plat"},
}


@pytest.mark.parametrize("who", ["mallory", "plat", "auditor"])
def test_authz_matrix_denies_wrong_principals(api, who):
    _setup(api)
    before = api.call("GET", "/v1/cameos/alice", "alice").json()
    denied = 0
    for method, path, body in ROUTES:
        if who in ALLOWED.get((method, path), set()):
            continue
        r = _send(api, who, method, path, body)
        assert r.status_code == 403, (who, method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "forbidden"
        denied += 1
    if who != "mallory":
        for method, path, body in USER_ROUTES:
            r = _send(api, who, method, path, body)
            assert r.status_code == 403, (who, method, path, r.text)
            denied += 1
    assert denied >= len(ROUTES) - 1
    # Nothing changed: same settings, grant and block still in place.
    assert api.call("GET", "/v1/cameos/alice", "alice").json() == before
    assert [g["grantee_handle"] for g in api.call("GET", "/v1/cameos/alice/grants", "alice").json()] == [
        "bob"
    ]
    assert api.call("GET", "/v1/cameos/alice/blocks", "alice").json() == ["carl"]


def test_authz_anonymous_gets_401_everywhere(api):
    _setup(api)
    for method, path, body in ROUTES + USER_ROUTES + [("GET", "/v1/me", None)]:
        r = api.client.request(method, path, json=body)
        assert r.status_code == 401, (method, path)


def test_authz_public_routes_need_no_key(api):
    assert api.client.get("/.well-known/jwks.json").status_code == 200
    assert api.client.get("/healthz").status_code == 200
    assert api.client.post("/v1/consent/receipts/status", json={"receipt": "a.b.c"}).status_code == 422


def test_authz_platform_learns_decisions_only(api):
    _setup(api)
    body = api.check("bob", ["alice"]).json()
    assert set(body) == {
        "check_id",
        "allowed",
        "decisions",
        "consent_revision",
        "receipt",
        "receipt_expires_at",
    }
    assert set(body["decisions"][0]) == {"handle", "cameo_id", "allowed", "reason", "restrictions"}


# Routes anyone may call: key and checkpoint publication, receipt and provenance checks (whoever
# holds a receipt or a video may ask about it), witness cosignatures (verified against configured
# witness keys), the biometric notice and retention policy, and health.
PUBLIC = {
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/healthz"),
    ("GET", "/v1/log/key"),
    ("GET", "/v1/log/checkpoint"),
    ("GET", "/v1/log/checkpoints/{size}"),
    ("POST", "/v1/log/checkpoints/{size}/cosignatures"),
    ("GET", "/v1/provenance/anchors"),
    ("GET", "/v1/provenance/status/{generation_id}"),
    ("POST", "/v1/provenance/lookup"),
    ("POST", "/v1/provenance/verify"),
    ("POST", "/v1/consent/receipts/status"),
    ("GET", "/v1/verification/notice"),
    ("GET", "/v1/verification/retention"),
}


def test_authz_every_route_in_the_schema_needs_a_key_unless_declared_public(api):
    """A route added without authentication fails here, not in production."""
    _setup(api)
    spec = api.client.app.openapi()
    seen = set()
    for path, operations in spec["paths"].items():
        for method in operations:
            seen.add((method.upper(), path))
            url = path.replace("{size}", "1")
            for name in [p[1:-1] for p in path.split("/") if p.startswith("{")]:
                url = url.replace("{" + name + "}", "alice")
            r = api.client.request(method.upper(), url, json={})
            if (method.upper(), path) in PUBLIC:
                assert r.status_code != 401, (method, path)
            else:
                assert r.status_code == 401, (method, path, r.status_code)
                assert r.json()["error"]["code"] == "unauthenticated"
    assert not PUBLIC - seen, PUBLIC - seen
