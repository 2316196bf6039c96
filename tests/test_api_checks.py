"""Consent checks, revocation with and without revision tokens, and receipts."""

import base64
import json
import time

from consent_service.receipts import b64url, b64url_decode
from consent_service.services.checks import prompt_sha256


def _granted(api):
    api.user_with_cameo("alice")
    api.user_with_cameo("carol", audience="everyone")
    api.principal("bob")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )


def test_check_allowed_returns_decisions_and_receipt(api):
    _granted(api)
    r = api.check("bob", ["@alice", "carol"], prompt="@alice and @carol dance")
    assert r.status_code == 200
    body = r.json()
    assert body["allowed"] is True
    assert [(d["handle"], d["reason"]) for d in body["decisions"]] == [
        ("alice", "granted"),
        ("carol", "audience_everyone"),
    ]
    assert body["receipt"] and body["receipt_expires_at"] > time.time()
    header, claims, _ = body["receipt"].split(".")
    header, claims = json.loads(b64url_decode(header)), json.loads(b64url_decode(claims))
    jwks = api.client.get("/.well-known/jwks.json").json()
    assert header["alg"] == "EdDSA" and header["kid"] in [k["kid"] for k in jwks["keys"]]
    assert claims["prompt_sha256"] == prompt_sha256("@alice and @carol dance")
    assert claims["rev"] == body["consent_revision"] and claims["purpose"] == "generate"
    assert claims["cameos"] == [d["cameo_id"] for d in body["decisions"]]
    assert claims["exp"] - claims["iat"] <= 600


def test_check_one_denied_cameo_denies_all_and_signs_nothing(api):
    _granted(api)
    api.user_with_cameo("dora")
    body = api.check("bob", ["alice", "dora"]).json()
    assert body["allowed"] is False and body["receipt"] is None
    assert [d["reason"] for d in body["decisions"]] == ["granted", "not_granted"]


def test_check_refused_while_the_audit_writer_is_full(api):
    _granted(api)
    audit = api.client.app.state.runtime.audit
    before = api.call("GET", "/v1/audit/events", "auditor", params={"action": "consent.check"}).json()
    # As if audit_max_pending checks were already waiting (the writer's own test fills it for real).
    limit, audit._max_pending = audit._max_pending, 0
    r = api.check("bob", ["alice"])
    audit._max_pending = limit
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert r.headers["Retry-After"] == "1" and "receipt" not in r.json()
    after = api.call("GET", "/v1/audit/events", "auditor", params={"action": "consent.check"}).json()
    assert after == before  # refused before any decision was given or audited
    assert api.check("bob", ["alice"]).json()["allowed"] is True


def test_check_bad_inputs(api):
    _granted(api)
    r = api.check("bob", ["alice", "ghost", "nobody"])
    assert r.status_code == 404 and r.json()["error"]["details"]["handles"] == ["ghost", "nobody"]
    assert api.check("ghost", ["alice"]).status_code == 404
    r = api.check("bob", [f"u{i}" for i in range(9)])
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_cameos"
    assert api.check("bob", []).status_code == 422
    r = api.check("bob", ["alice"], prompt="x" * 5000)
    assert r.status_code == 422 and r.json()["error"]["code"] == "prompt_too_long"
    assert api.check("bob", ["alice"], purpose="telepathy").status_code == 422
    assert api.check("bob", ["alice"], at_least_as_fresh=-1).status_code == 422
    r = api.call(
        "POST",
        "/v1/consent/checks",
        "plat",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    r = api.client.post(
        "/v1/consent/checks", content=b"x" * 200_000, headers={"Authorization": f"Bearer {api.keys['plat']}"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_check_chunked_oversized_body_is_refused(api):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    r = api.client.post(
        "/v1/consent/checks", content=chunks(), headers={"Authorization": f"Bearer {api.keys['plat']}"}
    )
    assert r.status_code == 413


def test_revocation_next_check_without_token(api):
    _granted(api)
    assert api.check("bob", ["alice"]).json()["allowed"]
    assert api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").status_code == 200
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "not_granted"


def test_revocation_next_check_with_token(api):
    _granted(api)
    rev = api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").json()["consent_revision"]
    body = api.check("bob", ["alice"], at_least_as_fresh=rev).json()
    assert body["allowed"] is False and body["consent_revision"] >= rev


def test_revision_from_the_future_fails_closed(api):
    _granted(api)
    r = api.check("bob", ["alice"], at_least_as_fresh=10**9)
    assert r.status_code == 409 and r.json()["error"]["code"] == "revision_unavailable"


def test_each_revocation_kind_denies_at_once(api):
    _granted(api)
    api.call("PATCH", "/v1/cameos/alice", "alice", json={"audience": "everyone"})
    revokes = [
        ("PATCH", "/v1/cameos/alice", {"audience": "approved"}, "granted"),
        ("DELETE", "/v1/cameos/alice/grants/bob", None, "not_granted"),
        ("POST", "/v1/cameos/alice/blocks", {"handle": "carol"}, "not_granted"),
        ("PATCH", "/v1/cameos/alice", {"audience": "only_me"}, "audience_only_me"),
        ("DELETE", "/v1/cameos/alice", None, "cameo_deleted"),
    ]
    for method, url, body, reason in revokes:
        r = api.call(method, url, "alice", json=body) if body else api.call(method, url, "alice")
        assert r.status_code in (200, 201), r.text
        assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == reason, url


def _status(api, receipt):
    return api.client.post("/v1/consent/receipts/status", json={"receipt": receipt})


def test_receipt_status_valid_then_revoked(api):
    _granted(api)
    receipt = api.check("bob", ["alice"]).json()["receipt"]
    r = _status(api, receipt)
    assert r.status_code == 200 and r.json()["valid"] is True and r.json()["status"] == "valid"
    assert "sub" not in r.json()["claims"]  # no personal data beyond pseudonymous cameo ids
    api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
    body = _status(api, receipt).json()
    assert body["valid"] is False and body["status"] == "revoked"
    assert list(body["reasons"].values()) == ["not_granted"]


def test_receipt_forged_signature_rejected(api):
    _granted(api)
    receipt = api.check("bob", ["alice"]).json()["receipt"]
    header, claims, sig = receipt.split(".")
    data = json.loads(b64url_decode(claims))
    data["cameos"].append("someone-else")
    forged = f"{header}.{b64url(json.dumps(data).encode())}.{sig}"
    r = _status(api, forged)
    assert r.status_code == 422 and r.json()["error"]["code"] == "receipt_signature_invalid"
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert _status(api, f"{header}.{claims}.{flipped}").json()["error"]["code"] == "receipt_signature_invalid"


def test_receipt_from_unknown_key_rejected(api):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from consent_service.receipts import ReceiptKeys

    _granted(api)
    real = api.check("bob", ["alice"]).json()["receipt"]
    claims = json.loads(b64url_decode(real.split(".")[1]))
    other = ReceiptKeys(signing=Ed25519PrivateKey.generate()).sign(claims)
    r = _status(api, other)
    assert r.status_code == 422 and r.json()["error"]["code"] == "receipt_unknown_key"


def test_receipt_malformed_rejected(api):
    for token in ["abc", "a.b.c", base64.b64encode(b"{}").decode() + ".."]:
        r = _status(api, token)
        assert r.status_code == 422 and r.json()["error"]["code"].startswith("receipt_"), token
    assert _status(api, "").status_code == 422


def test_receipt_expired(api):
    _granted(api)
    keys = api.client.app.state.runtime.keys
    real = api.check("bob", ["alice"]).json()["receipt"]
    claims = json.loads(b64url_decode(real.split(".")[1]))
    claims["exp"] = int(time.time()) - 1
    r = _status(api, keys.sign(claims))
    assert r.status_code == 200 and r.json() | {"claims": None} == {
        "valid": False,
        "status": "expired",
        "consent_revision": r.json()["consent_revision"],
        "reasons": {},
        "claims": None,
    }


def test_receipt_key_rotation_keeps_old_receipts_verifiable(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from consent_service.receipts import ReceiptKeys

    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = ReceiptKeys(signing=old).sign({"exp": time.time() + 60, "rev": 1})
    rotated = ReceiptKeys(signing=new, previous=(old.public_key(),))
    assert rotated.verify(token, now=time.time())["rev"] == 1
    assert len(rotated.jwks()["keys"]) == 2


def test_receipt_revoked_then_regranted_stays_revoked(api):
    """A receipt rests on the consent it was issued under; a later re-grant does not revive it."""
    _granted(api)
    receipt = api.check("bob", ["alice"]).json()["receipt"]
    api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    body = _status(api, receipt).json()
    assert body["valid"] is False and list(body["reasons"].values()) == ["revoked_since_issued"]
    fresh = api.check("bob", ["alice"]).json()["receipt"]
    assert _status(api, fresh).json()["valid"] is True
    # A new process learns the revocation from the recent change log, not only from live changes.
    from fastapi.testclient import TestClient

    from consent_service.app import create_app

    with TestClient(create_app(api.settings)) as other:
        body = other.post("/v1/consent/receipts/status", json={"receipt": receipt}).json()
        assert body["valid"] is False and body["status"] == "revoked"


def _same_shape(response):
    """Status and body, minus what differs on every call (ids, signatures, times)."""
    body = response.json()
    for volatile in ("check_id", "receipt", "receipt_expires_at"):
        if volatile in body:
            body[volatile] = bool(body[volatile])
    return response.status_code, response.headers["content-type"], body


def parity_cases(api):
    """Checks of every kind, good and bad, as (headers, body, query): a dict body goes as JSON."""
    _granted(api)
    api.user_with_cameo("dora")
    plat, bob = api.auth("plat"), api.auth("bob")
    good = {"actor_handle": "bob", "cameo_handles": ["alice"]}
    cases = [
        (plat, {"actor_handle": "bob", "cameo_handles": ["@alice", "carol"], "prompt": "@alice waves"}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice", "dora"], "purpose": "remix"}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice", "ghost"]}),
        (plat, {"actor_handle": "bob", "cameo_handles": [f"u{i}" for i in range(9)]}),
        (plat, {"actor_handle": "bob", "cameo_handles": []}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "prompt": "x" * 5000}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "purpose": "telepathy"}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "at_least_as_fresh": -1}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "at_least_as_fresh": 10**9}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "surprise": 1}),
        (plat, {"cameo_handles": ["alice"]}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "at_least_as_fresh": "1"}),
        (plat, {"actor_handle": "bob", "cameo_handles": "alice"}),
        (plat, {"actor_handle": 7, "cameo_handles": ["alice"]}),
        (plat, {"actor_handle": "bob", "cameo_handles": ["alice"], "purpose": "GENERATE"}),
        (plat, ["bob", ["alice"]]),
        (plat, b"{not json"),
        (plat, b""),
        (bob, good),
        ({}, good),
        ({"Authorization": "Bearer csk_nope_nope"}, good),
        ([*bob.items(), *plat.items()], good),
        # The body limit comes first on both paths, ahead of authentication.
        ({}, b'{"actor_handle": "' + b"x" * 70_000 + b'"}'),
        (plat, b'{"actor_handle": "bob", "cameo_handles": ["alice"], "prompt": "a\\u0000b"}'),
        (plat, b'{"actor_handle": "bob", "cameo_handles": ["alice"], "prompt": "a\\\\u0000b"}'),
        ({**plat, "Content-Type": "text/plain"}, b'{"actor_handle": "bob", "cameo_handles": ["alice"]}'),
        ({}, {"actor_handle": "bob", "cameo_handles": ["alice"], "surprise": 1}),
    ]
    with_query = [({}, good, "?x=%00"), (plat, good, "?x=1")]
    return [(headers, body, "") for headers, body in cases] + with_query


PARITY_STATUSES = [
    200,
    200,
    404,
    422,
    422,
    422,
    422,
    422,
    409,
    422,
    422,
    200,
    422,
    422,
    422,
    422,
    422,
    422,
    403,
    401,
    401,
    403,  # two Authorization headers: the first (bob's) counts, on both paths
    413,
    422,  # a NUL
    200,  # an escaped backslash, then the text "u0000": no NUL
    422,
    401,  # not a valid check, and no key: authentication first, on every path
    422,
    200,
]


def parity_answers(client, cases):
    out = []
    for headers, body, query in cases:
        url = "/v1/consent/checks" + query
        if isinstance(body, bytes):
            json_ct = {"Content-Type": "application/json"}
            r = client.post(url, content=body, headers={**json_ct, **dict(headers)})
        else:
            r = client.post(url, json=body, headers=headers)
        out.append(_same_shape(r))
    return out


def test_hot_path_answers_exactly_like_the_framework_route(api):
    """Every kind of check, good and bad, gets the same answer with the hot path on and off."""
    from fastapi.testclient import TestClient

    from consent_service.app import create_app

    cases = parity_cases(api)
    hot = parity_answers(api.client, cases)
    with TestClient(create_app(api.settings.model_copy(update={"check_hot_path": False}))) as plain:
        assert parity_answers(plain, cases) == hot
    assert [status for status, _, _ in hot] == PARITY_STATUSES


def test_fastapi_telemetry_runs_only_when_the_setting_asks(settings, monkeypatch):
    """Off by default (asking the providers cost the loop 2.5% per check); on, it follows them."""
    from opentelemetry import trace

    from consent_service.app import create_app

    # A configured (non-proxy) tracer provider, as an operator's OpenTelemetry set-up installs.
    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    assert not create_app(settings)._native_telemetry.enabled()
    assert create_app(settings.model_copy(update={"otel_telemetry": True}))._native_telemetry.enabled()
