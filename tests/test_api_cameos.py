"""Cameos, settings, grants, blocks and follows through the API."""

from consent_service.models import CameoState
from tests.conftest import minor_birth_date


def test_cameo_create_once_and_view_own(api):
    api.principal("alice")
    r = api.call("POST", "/v1/cameos", "alice")
    assert r.status_code == 201
    body = r.json()
    assert body["cameo"]["state"] == "unverified" and body["cameo"]["audience"] == "only_me"
    assert body["consent_revision"] >= 1
    again = api.call("POST", "/v1/cameos", "alice")
    assert again.status_code == 409 and again.json()["error"]["code"] == "cameo_exists"
    assert api.call("GET", "/v1/cameos/alice", "alice").json()["id"] == body["cameo"]["id"]


def test_cameo_unknown_and_missing(api):
    api.principal("alice")
    assert api.call("GET", "/v1/cameos/ghost", "alice").json()["error"]["code"] == "unknown_handle"
    r = api.call("GET", "/v1/cameos/alice", "alice")
    assert r.status_code == 404 and r.json()["error"]["code"] == "cameo_not_found"


def test_cameo_settings_change_returns_increasing_revision(api):
    api.user_with_cameo("alice", audience="only_me")
    revisions = []
    for audience in ["approved", "mutuals", "everyone", "only_me"]:
        r = api.call("PATCH", "/v1/cameos/alice", "alice", json={"audience": audience})
        assert r.status_code == 200 and r.json()["cameo"]["audience"] == audience
        revisions.append(r.json()["consent_revision"])
    assert revisions == sorted(revisions) and len(set(revisions)) == 4


def test_cameo_restrictions_are_returned_by_checks(api):
    api.user_with_cameo("alice", audience="everyone")
    api.principal("bob")
    r = api.call(
        "PATCH",
        "/v1/cameos/alice",
        "alice",
        json={"banned_terms": ["  Politics ", "politics", "war"], "instructions": "No ads."},
    )
    assert r.json()["cameo"]["banned_terms"] == ["politics", "war"]
    d = api.check("bob", ["alice"], prompt="@alice waves").json()["decisions"][0]
    assert d["allowed"] and d["restrictions"] == {
        "banned_terms": ["politics", "war"],
        "instructions": "No ads.",
    }
    d = api.check("bob", ["alice"], prompt="@alice talks POLITICS").json()
    assert not d["allowed"] and d["decisions"][0]["reason"] == "content_restricted" and d["receipt"] is None


def test_cameo_minor_cannot_be_everyone(api):
    api.user_with_cameo("kid", birth_date=minor_birth_date())
    r = api.call("PATCH", "/v1/cameos/kid", "kid", json={"audience": "everyone"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "minor_audience_forbidden"


def test_cameo_guardian_sees_and_revokes_but_cannot_loosen(api):
    api.user_with_cameo("kid", audience="mutuals", birth_date=minor_birth_date())
    api.principal("mom")
    api.principal("pal", birth_date=minor_birth_date())
    api.call("POST", "/v1/users/kid/guardians", "root", json={"guardian_handle": "mom"})
    assert (
        api.call(
            "POST", "/v1/cameos/kid/grants", "kid", json={"grantee_handle": "pal", "purposes": ["generate"]}
        ).status_code
        == 201
    )
    assert api.call("GET", "/v1/cameos/kid", "mom").status_code == 200
    assert api.call("GET", "/v1/cameos/kid/grants", "mom").json()[0]["grantee_handle"] == "pal"
    assert api.call("DELETE", "/v1/cameos/kid/grants/pal", "mom").status_code == 200
    assert api.call("PATCH", "/v1/cameos/kid", "mom", json={"audience": "approved"}).status_code == 200
    assert api.call("POST", "/v1/cameos/kid/blocks", "mom", json={"handle": "pal"}).status_code == 201
    # Loosening stays with the owner.
    assert api.call("PATCH", "/v1/cameos/kid", "mom", json={"audience": "mutuals"}).status_code == 403
    assert (
        api.call(
            "POST", "/v1/cameos/kid/grants", "mom", json={"grantee_handle": "pal", "purposes": ["generate"]}
        ).status_code
        == 403
    )
    assert api.call("DELETE", "/v1/cameos/kid/blocks/pal", "mom").status_code == 403


def test_cameo_delete_denies_and_drops_grants(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    assert api.check("bob", ["alice"]).json()["allowed"]
    r = api.call("DELETE", "/v1/cameos/alice", "alice")
    assert r.status_code == 200 and r.json()["cameo"]["state"] == "deleted"
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "cameo_deleted"
    assert api.call("GET", "/v1/cameos/alice/grants", "alice").json() == []
    # A user may start over; the new cameo is unverified and private.
    r = api.call("POST", "/v1/cameos", "alice")
    assert r.status_code == 201 and r.json()["cameo"]["state"] == "unverified"


def test_cameo_moderation_by_admin(api):
    api.user_with_cameo("alice", audience="everyone")
    api.principal("bob")
    r = api.call("POST", "/v1/cameos/alice/moderation", "root", json={"suspend": True, "reason": "report 7"})
    assert r.status_code == 200 and r.json()["cameo"]["state"] == "suspended"
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "cameo_suspended"
    r = api.call("POST", "/v1/cameos/alice/moderation", "root", json={"suspend": False})
    assert r.json()["cameo"]["state"] == "unverified"
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "cameo_unverified"


def test_grant_validation(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    bad = [
        ({"grantee_handle": "bob", "purposes": []}, 422),
        ({"grantee_handle": "bob", "purposes": ["telepathy"]}, 422),
        ({"grantee_handle": "bob", "purposes": ["generate"], "expires_at": "2000-01-01T00:00:00Z"}, 422),
        ({"grantee_handle": "alice", "purposes": ["generate"]}, 422),
        ({"grantee_handle": "ghost", "purposes": ["generate"]}, 404),
        ({"grantee_handle": "plat", "purposes": ["generate"]}, 422),
    ]
    for body, status in bad:
        r = api.call("POST", "/v1/cameos/alice/grants", "alice", json=body)
        assert r.status_code == status, (body, r.text)
    assert api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").status_code == 404


def test_grant_with_expiry_and_purposes(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    r = api.call(
        "POST",
        "/v1/cameos/alice/grants",
        "alice",
        json={
            "grantee_handle": "bob",
            "purposes": ["remix", "generate"],
            "expires_at": "2999-01-01T00:00:00Z",
        },
    )
    assert r.status_code == 201 and r.json()["grant"]["purposes"] == ["generate", "remix"]
    assert api.check("bob", ["alice"], purpose="remix").json()["allowed"]
    assert (
        api.check("bob", ["alice"], purpose="edit").json()["decisions"][0]["reason"] == "purpose_not_granted"
    )


def test_grant_again_replaces_scope_and_expiry(api):
    """A second grant to the same person is one grant with the new terms, not a second row."""
    api.user_with_cameo("alice")
    api.principal("bob")
    url = "/v1/cameos/alice/grants"
    first = {"grantee_handle": "bob", "purposes": ["remix"], "expires_at": "2999-01-01T00:00:00Z"}
    r = api.call("POST", url, "alice", json=first)
    assert r.status_code == 201
    created = api.call("GET", url, "alice").json()[0]["created_at"]
    r = api.call("POST", url, "alice", json={"grantee_handle": "bob", "purposes": ["generate"]})
    assert r.status_code == 201 and r.json()["grant"]["expires_at"] is None
    listed = api.call("GET", url, "alice").json()
    terms = [(g["grantee_handle"], g["purposes"], g["expires_at"]) for g in listed]
    assert terms == [("bob", ["generate"], None)]
    assert listed[0]["created_at"] == created
    assert api.check("bob", ["alice"], purpose="generate").json()["allowed"]
    reason = api.check("bob", ["alice"], purpose="remix").json()["decisions"][0]["reason"]
    assert reason == "purpose_not_granted"
    assert api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").status_code == 200
    assert api.call("GET", url, "alice").json() == []
    assert api.call("DELETE", "/v1/cameos/alice/grants/bob", "alice").status_code == 404


def test_blocks_list_and_remove(api):
    api.user_with_cameo("alice", audience="everyone")
    api.principal("bob")
    assert api.call("POST", "/v1/cameos/alice/blocks", "alice", json={"handle": "bob"}).status_code == 201
    assert api.call("GET", "/v1/cameos/alice/blocks", "alice").json() == ["bob"]
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "blocked"
    assert api.call("DELETE", "/v1/cameos/alice/blocks/bob", "alice").status_code == 200
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "audience_everyone"
    assert api.call("DELETE", "/v1/cameos/alice/blocks/bob", "alice").status_code == 404
    assert api.call("POST", "/v1/cameos/alice/blocks", "alice", json={"handle": "alice"}).status_code == 422


def test_follows_make_mutuals(api):
    api.user_with_cameo("alice", audience="mutuals")
    api.principal("bob")
    assert api.call("PUT", "/v1/follows/alice", "bob").status_code == 200
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "not_granted"
    assert api.call("PUT", "/v1/follows/bob", "alice").status_code == 200
    assert api.call("GET", "/v1/follows", "alice").json()["mutuals"] == ["bob"]
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "audience_mutuals"
    assert api.call("DELETE", "/v1/follows/bob", "alice").status_code == 200
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "not_granted"
    assert api.call("DELETE", "/v1/follows/bob", "alice").status_code == 404
    assert api.call("PUT", "/v1/follows/alice", "alice").status_code == 422


def test_set_state_is_a_service_not_a_route(api):
    api.user_with_cameo("alice", verified=False)
    r = api.call("PATCH", "/v1/cameos/alice", "alice", json={"state": "verified"})
    assert r.status_code == 422
    api.set_state("alice", CameoState.verified)
    assert api.call("GET", "/v1/cameos/alice", "alice").json()["state"] == "verified"
