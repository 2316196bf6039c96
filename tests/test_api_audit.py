"""The audit trail: written with every change and decision, readable by auditors only."""

from sqlmodel import Session, func, select

from consent_service.models import AuditEvent


def test_audit_events_for_changes_and_checks(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    rev = api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    ).json()["consent_revision"]
    api.check("bob", ["alice"])
    api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
    api.check("bob", ["alice"])
    page = api.call("GET", "/v1/audit/events", "auditor", params={"cameo": "alice"}).json()
    actions = [(e["action"], e["decision"], e["reason"]) for e in page["events"]]
    assert ("grant.create", "allow", None) in actions
    assert ("grant.revoke", "deny", None) in actions
    assert ("consent.check", "allow", "granted") in actions
    assert ("consent.check", "deny", "not_granted") in actions
    grant_event = next(e for e in page["events"] if e["action"] == "grant.create")
    assert grant_event["revision"] == rev and grant_event["at"]


def test_audit_filters_and_pagination(api):
    api.user_with_cameo("alice", audience="everyone")
    api.principal("bob")
    for _ in range(5):
        api.check("bob", ["alice"])
    r = api.call(
        "GET",
        "/v1/audit/events",
        "auditor",
        params={"action": "consent.check", "decision": "allow", "actor": "bob", "limit": 2},
    )
    first = r.json()
    assert len(first["events"]) == 2 and first["next_cursor"]
    ids = [e["id"] for e in first["events"]]
    cursor = first["next_cursor"]
    while cursor:
        page = api.call(
            "GET",
            "/v1/audit/events",
            "auditor",
            params={"action": "consent.check", "actor": "bob", "limit": 2, "after": cursor},
        ).json()
        ids += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
    assert len(ids) == 5 and ids == sorted(ids)
    none = api.call("GET", "/v1/audit/events", "auditor", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert none["events"] == []
    assert api.call("GET", "/v1/audit/events", "auditor", params={"limit": 10_000}).status_code == 422


def test_audit_has_no_write_routes(api):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        r = api.call(method, "/v1/audit/events", "auditor")
        assert r.status_code == 405


def test_audit_key_issuance_and_every_change_recorded(api):
    api.user_with_cameo("alice")
    with Session(api.client.app.state.runtime.engine) as s:
        actions = set(s.exec(select(AuditEvent.action)).all())
        total = s.exec(select(func.count()).select_from(AuditEvent)).one()
    assert {
        "principal.create",
        "api_key.issue",
        "cameo.create",
        "cameo.verified",
        "cameo.settings",
    } <= actions
    assert total >= 8


def test_audit_events_never_contain_secrets(api):
    api.principal("alice")
    page = api.call("GET", "/v1/audit/events", "auditor").json()
    text = str(page)
    assert all(key.split("_", 2)[2] not in text for key in api.keys.values())
