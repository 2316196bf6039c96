def test_api_check_grant_then_revoke(api):
    api.user_with_cameo("alice")
    api.principal("bob")
    assert api.check("bob", ["alice"]).json()["decisions"][0]["reason"] == "not_granted"
    r = api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    assert r.status_code == 201, r.text
    body = api.check("bob", ["alice"]).json()
    assert body["allowed"] and body["receipt"], body
