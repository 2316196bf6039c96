"""Accounts and authentication through the API."""

from tests.conftest import minor_birth_date


def test_principal_create_returns_key_once_and_stores_hash(api):
    r = api.call(
        "POST", "/v1/principals", "root", json={"kind": "user", "handle": "Alice", "birth_date": "1990-01-01"}
    )
    assert r.status_code == 201
    token = r.json()["api_key"]
    assert r.json()["principal"]["handle"] == "alice"
    me = api.client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["handle"] == "alice"
    from sqlmodel import Session, select

    from consent_service.models import ApiKey

    with Session(api.client.app.state.runtime.engine) as s:
        stored = s.exec(select(ApiKey)).all()
    assert all(token.split("_", 2)[2] not in k.secret_hash for k in stored)


def test_principal_duplicate_handle_conflicts(api):
    api.principal("alice")
    r = api.call(
        "POST", "/v1/principals", "root", json={"kind": "user", "handle": "ALICE", "birth_date": "1990-01-01"}
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "handle_taken"


def test_principal_bad_inputs_rejected(api):
    cases = [
        ({"kind": "user", "handle": "x y", "birth_date": "1990-01-01"}, "invalid_request"),
        ({"kind": "user", "handle": "bob"}, "invalid_request"),
        ({"kind": "user", "handle": "bob", "birth_date": "2999-01-01"}, "invalid_request"),
        ({"kind": "wizard", "handle": "bob"}, "invalid_request"),
        ({"kind": "user", "handle": "bob", "birth_date": "1990-01-01", "extra": 1}, "invalid_request"),
    ]
    for body, code in cases:
        r = api.call("POST", "/v1/principals", "root", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == code


def test_auth_missing_malformed_and_wrong_keys_are_401(api):
    api.principal("alice")
    good = api.keys["alice"]
    for header in [
        None,
        "Bearer nope",
        f"Basic {good}",
        f"Bearer {good[:-2]}xx",
        "Bearer csk_0123456789abcdef_forged",
    ]:
        headers = {"Authorization": header} if header else {}
        r = api.client.get("/v1/me", headers=headers)
        assert r.status_code == 401, header
        assert r.json()["error"]["code"] == "unauthenticated"


def test_issue_extra_key_and_both_work(api):
    api.principal("alice")
    r = api.call("POST", "/v1/principals/alice/keys", "root")
    assert r.status_code == 201
    second = r.json()["api_key"]
    assert second != api.keys["alice"]
    for key in (second, api.keys["alice"]):
        assert api.client.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_admin_lists_and_revokes_keys_and_a_revoked_key_is_refused_at_once(api):
    first = api.keys["plat"]  # the fixture's platform
    second = api.call("POST", "/v1/principals/plat/keys", "root").json()
    assert second["key_id"] == second["api_key"].split("_")[1]
    listed = api.call("GET", "/v1/principals/plat/keys", "root").json()
    assert [k["key_id"] for k in listed] == [first.split("_")[1], second["key_id"]]
    assert not any(k["revoked"] for k in listed)
    assert all(set(k) == {"key_id", "created_at", "revoked"} for k in listed)  # never a secret
    assert api.call("GET", "/v1/me", "plat").status_code == 200  # cached now

    r = api.call("DELETE", f"/v1/principals/plat/keys/{first.split('_')[1]}", "root")
    assert r.status_code == 200 and r.json()["revoked"] is True
    refused = api.call("GET", "/v1/me", "plat")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    other = {"Authorization": f"Bearer {second['api_key']}"}
    assert api.client.get("/v1/me", headers=other).status_code == 200
    assert [k["revoked"] for k in api.call("GET", "/v1/principals/plat/keys", "root").json()] == [True, False]

    again = api.call("DELETE", f"/v1/principals/plat/keys/{first.split('_')[1]}", "root")
    assert again.status_code == 200 and again.json()["revoked"] is True
    events = api.call("GET", "/v1/audit/events", "root", params={"action": "api_key.revoke"}).json()["events"]
    assert len(events) == 1  # revoking twice is one revocation

    api.principal("alice")
    for path, code in [
        ("/v1/principals/plat/keys/0000000000000000", "not_found"),
        (f"/v1/principals/alice/keys/{second['key_id']}", "not_found"),  # not alice's key
        (f"/v1/principals/ghost/keys/{second['key_id']}", "unknown_handle"),
    ]:
        r = api.call("DELETE", path, "root")
        assert r.status_code == 404 and r.json()["error"]["code"] == code, (path, r.text)


def test_guardian_link_rules(api):
    api.principal("kid", birth_date=minor_birth_date())
    api.principal("mom")
    api.principal("teen", birth_date=minor_birth_date())
    assert (
        api.call("POST", "/v1/users/kid/guardians", "root", json={"guardian_handle": "mom"}).status_code
        == 204
    )
    r = api.call("POST", "/v1/users/mom/guardians", "root", json={"guardian_handle": "kid"})
    assert r.status_code == 422  # an adult has no guardian
    r = api.call("POST", "/v1/users/kid/guardians", "root", json={"guardian_handle": "teen"})
    assert r.status_code == 403  # a guardian must be an adult
    r = api.call("POST", "/v1/users/kid/guardians", "root", json={"guardian_handle": "ghost"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_handle"


def test_unknown_route_and_method_have_error_bodies(api):
    r = api.client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.client.put("/v1/consent/checks")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_reports_revision(api):
    r = api.client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert isinstance(r.json()["consent_revision"], int)


def test_openapi_documents_the_one_error_body_that_every_route_sends(api):
    import json

    from consent_service.schemas import ErrorResponse

    spec = api.client.get("/openapi.json").json()
    operations = [(path, op) for path, item in spec["paths"].items() for op in item.values()]
    assert operations
    for path, op in operations:
        documented = op["responses"]["4XX"]["content"]["application/json"]["schema"]
        assert documented == {"$ref": "#/components/schemas/ErrorResponse"}, path
    assert "HTTPValidationError" not in json.dumps(spec)  # a body this service never sends
    refused = [
        api.client.get("/v1/me"),
        api.call("POST", "/v1/principals", "root", json={"kind": "wizard"}),
        api.call("GET", "/v1/principals/ghost/keys", "root"),
    ]
    assert [r.status_code for r in refused] == [401, 422, 404]
    for r in refused:
        ErrorResponse.model_validate(r.json())
