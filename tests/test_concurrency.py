"""The same change sent eight times at once: one effect, the same answers as one at a time, no 500s.

Run on both databases. SQLite has one writer by construction; on PostgreSQL every
write transaction first locks the consent revision counter (db.write_transaction).
Before that, concurrent identical requests raced between their existence check and
their insert or delete.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.conftest import at_once

COPIES = 8


def _at_once(api, method, url, who, body=None) -> Counter:
    return Counter(at_once(lambda: api.call(method, url, who, json=body).status_code, COPIES))


def _events(api, action: str) -> int:
    r = api.call("GET", "/v1/audit/events", "auditor", params={"action": action, "limit": 500})
    assert r.status_code == 200, r.text
    return len(r.json()["events"])


@pytest.mark.parametrize(
    ("name", "method", "url", "who", "body", "expected", "action", "events"),
    [
        ("follow", "PUT", "/v1/follows/alice", "bob", None, {200: COPIES}, "follow.create", 1),
        ("unfollow", "DELETE", "/v1/follows/carl", "bob", None, {200: 1, 404: 7}, "follow.remove", 1),
        (
            "block",
            "POST",
            "/v1/cameos/alice/blocks",
            "alice",
            {"handle": "dave"},
            {201: COPIES},
            "block.create",
            1,
        ),
        (
            "unblock",
            "DELETE",
            "/v1/cameos/alice/blocks/carl",
            "alice",
            None,
            {200: 1, 404: 7},
            "block.remove",
            1,
        ),
        (
            "revoke",
            "DELETE",
            "/v1/cameos/alice/grants/bob",
            "alice",
            None,
            {200: 1, 404: 7},
            "grant.revoke",
            1,
        ),
        ("cameo", "POST", "/v1/cameos", "bob", None, {201: 1, 409: 7}, "cameo.create", 1),
        (
            "principal",
            "POST",
            "/v1/principals",
            "root",
            {"kind": "user", "handle": "erin", "birth_date": "1990-01-01"},
            {201: 1, 409: 7},
            None,
            0,
        ),
    ],
)
def test_concurrent_identical_changes_take_effect_once(
    api, name, method, url, who, body, expected, action, events
):
    api.user_with_cameo("alice")
    for handle in ("bob", "carl", "dave"):
        api.principal(handle)
    api.call("PUT", "/v1/follows/carl", "bob")
    api.call("POST", "/v1/cameos/alice/blocks", "alice", json={"handle": "carl"})
    r = api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    assert r.status_code == 201, r.text
    before = _events(api, action) if action else 0
    assert _at_once(api, method, url, who, body) == Counter(expected), name
    if action:
        assert _events(api, action) - before == events, name
    if name == "revoke":
        assert api.check("bob", ["alice"]).json()["allowed"] is False


def test_a_repeated_follow_or_block_changes_nothing_and_answers_the_current_revision(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    first = api.call("PUT", "/v1/follows/alice", "bob").json()["consent_revision"]
    assert api.call("PUT", "/v1/follows/alice", "bob").json()["consent_revision"] == first
    block = {"handle": "bob"}
    blocked = api.call("POST", "/v1/cameos/alice/blocks", "alice", json=block).json()["consent_revision"]
    assert blocked > first
    again = api.call("POST", "/v1/cameos/alice/blocks", "alice", json=block)
    assert (again.status_code, again.json()["consent_revision"]) == (201, blocked)
    assert (_events(api, "follow.create"), _events(api, "block.create")) == (1, 1)
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "blocked"
