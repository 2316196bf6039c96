"""The indexed Casbin policy container: counts, removal, and the union filter."""

from policy.index import PairIndexedPolicy


def test_index_counts_add_and_remove_without_scanning():
    policy = PairIndexedPolicy()
    rows = [
        ("bob", "alice", "generate", "", "allow", "granted"),
        ("@everyone", "alice", "*", "", "allow", "x"),
        ("carl", "dora", "*", "", "deny", "blocked"),
    ]
    for row in rows:
        policy.append(row)
    policy.append(rows[0])  # duplicates are not counted twice
    assert len(policy) == 3
    assert list(rows[0]) in policy and ("zed", "alice", "*", "", "allow", "x") not in policy
    assert policy.remove(rows[0]) is True
    assert policy.remove(rows[0]) is False
    assert len(policy) == 2


def test_index_filter_unions_pair_and_audience_rows():
    policy = PairIndexedPolicy()
    policy.append(("bob", "alice", "generate", "", "allow", "granted"))
    policy.append(("@mutuals", "alice", "*", "", "allow", "audience_mutuals"))
    policy.append(("carl", "alice", "*", "", "deny", "blocked"))
    policy.append(("bob", "dora", "*", "", "deny", "blocked"))
    policy.apply_filter("alice", "bob")
    assert sorted(r[0] for r in policy) == ["@mutuals", "bob"]
    assert len(policy) == 2
    policy.clear_filter()
    assert len(policy) == 4 and len(list(policy)) == 4


def test_index_drops_empty_buckets():
    policy = PairIndexedPolicy()
    row = ("bob", "alice", "generate", "", "allow", "granted")
    audience = ("@everyone", "alice", "*", "", "allow", "audience_everyone")
    policy.append(row)
    policy.append(audience)
    policy.remove(row)
    policy.remove(audience)
    assert policy.rows_for(owner="alice", actor="bob") == []
    assert policy._pairs == {} and policy._audience == {}


def test_index_keeps_a_pairs_other_rules_when_one_goes():
    policy = PairIndexedPolicy()
    grant = ("bob", "alice", "generate", "", "allow", "granted")
    block = ("bob", "alice", "*", "", "deny", "blocked")
    policy.append(grant)
    policy.append(block)
    assert sorted(policy.rows_for(owner="alice", actor="bob")) == sorted([grant, block])
    assert policy.remove(block) is True
    assert policy.rows_for(owner="alice", actor="bob") == [grant]
    assert block not in policy and grant in policy and len(policy) == 1
