"""Two service instances on one database: revocations reach the other instance."""

import time

from fastapi.testclient import TestClient

from consent_service.app import create_app


def _wait_denied(api, client, deadline_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        body = client.post(
            "/v1/consent/checks",
            json={"actor_handle": "bob", "cameo_handles": ["alice"]},
            headers=api.auth("plat"),
        ).json()
        if not body["allowed"]:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError("second instance never saw the revocation")


def test_second_instance_sees_revocation_without_token(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    with TestClient(create_app(api.settings)) as other:
        ok = other.post(
            "/v1/consent/checks",
            json={"actor_handle": "bob", "cameo_handles": ["alice"]},
            headers=api.auth("plat"),
        )
        assert ok.json()["allowed"]
        api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice")
        assert _wait_denied(api, other, deadline_s=1.0) < 1.0


def test_second_instance_with_token_answers_fresh_at_once(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    settings = api.settings.model_copy(update={"sync_interval_seconds": 5.0})
    with TestClient(create_app(settings)) as other:
        other.app.state.runtime.replica.stop()  # no background help: the token alone must force freshness
        rev = api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").json()["consent_revision"]
        body = other.post(
            "/v1/consent/checks",
            json={"actor_handle": "bob", "cameo_handles": ["alice"], "at_least_as_fresh": rev},
            headers=api.auth("plat"),
        ).json()
        assert body["allowed"] is False and body["consent_revision"] >= rev


def test_restarted_instance_loads_state_from_database(api):
    api.user_with_cameo("alice", audience="mutuals")
    api.principal("bob")
    api.principal("carl")
    api.call("PUT", "/v1/follows/alice", "bob")
    api.call("PUT", "/v1/follows/bob", "alice")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "carl", "purposes": ["remix"]}
    )
    rev = api.client.get("/healthz").json()["consent_revision"]
    with TestClient(create_app(api.settings)) as fresh:
        assert fresh.get("/healthz").json()["consent_revision"] == rev

        def reason(actor, purpose="generate"):
            return fresh.post(
                "/v1/consent/checks",
                json={"actor_handle": actor, "cameo_handles": ["alice"], "purpose": purpose},
                headers=api.auth("plat"),
            ).json()["decisions"][0]["reason"]

        assert reason("bob") == "audience_mutuals"
        assert reason("carl") == "purpose_not_granted"
        assert reason("carl", "remix") == "granted"
