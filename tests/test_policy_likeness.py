"""Table-driven tests over the real likeness model file (policy/likeness_model.conf)."""

from __future__ import annotations

import time
from datetime import date

import pytest

from policy.likeness import LikenessPolicy, Reason, is_minor

TODAY = date(2026, 6, 1)
ADULT = date(1990, 1, 1)
MINOR = date(2013, 1, 1)
NOW = time.time()


def cameo(owner: str, audience: str = "approved", state: str = "verified", birth: date = ADULT) -> dict:
    return {
        "op": "cameo",
        "owner": owner,
        "cameo": f"c-{owner}",
        "state": state,
        "audience": audience,
        "birth_date": birth.isoformat(),
        "banned_terms": ["war"],
        "instructions": "no violence",
    }


def grant(owner: str, grantee: str, purposes=("generate",), expires: float | None = None) -> dict:
    return {"op": "grant", "owner": owner, "grantee": grantee, "purposes": list(purposes), "expires": expires}


def follow(a: str, b: str) -> list[dict]:
    return [{"op": "follow", "follower": a, "followee": b}, {"op": "follow", "follower": b, "followee": a}]


def block(owner: str, actor: str) -> dict:
    return {"op": "block", "owner": owner, "actor": actor}


# (case, ops, actor, actor birth, purpose, expected allowed, expected reason)
CASES = [
    ("self", [cameo("alice")], "alice", ADULT, "generate", True, Reason.self_use),
    ("no grant", [cameo("alice")], "bob", ADULT, "generate", False, Reason.not_granted),
    ("granted", [cameo("alice"), grant("alice", "bob")], "bob", ADULT, "generate", True, Reason.granted),
    (
        "purpose not granted",
        [cameo("alice"), grant("alice", "bob")],
        "bob",
        ADULT,
        "remix",
        False,
        Reason.purpose_not_granted,
    ),
    (
        "grant expired",
        [cameo("alice"), grant("alice", "bob", expires=NOW - 1)],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.grant_expired,
    ),
    (
        "grant not yet expired",
        [cameo("alice"), grant("alice", "bob", expires=NOW + 60)],
        "bob",
        ADULT,
        "generate",
        True,
        Reason.granted,
    ),
    (
        "audience everyone",
        [cameo("alice", "everyone")],
        "bob",
        ADULT,
        "remix",
        True,
        Reason.audience_everyone,
    ),
    (
        "audience mutuals, mutual",
        [cameo("alice", "mutuals"), *follow("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        True,
        Reason.audience_mutuals,
    ),
    (
        "audience mutuals, one-way follow",
        [cameo("alice", "mutuals"), {"op": "follow", "follower": "bob", "followee": "alice"}],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.not_granted,
    ),
    (
        "block beats everyone",
        [cameo("alice", "everyone"), block("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.blocked,
    ),
    (
        "block beats grant",
        [cameo("alice"), grant("alice", "bob"), block("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.blocked,
    ),
    (
        "block beats mutuals",
        [cameo("alice", "mutuals"), *follow("alice", "bob"), block("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.blocked,
    ),
    (
        "only_me beats grant",
        [cameo("alice", "only_me"), grant("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.audience_only_me,
    ),
    (
        "block of someone else",
        [cameo("alice", "everyone"), block("alice", "carol")],
        "bob",
        ADULT,
        "generate",
        True,
        Reason.audience_everyone,
    ),
    (
        "unverified",
        [cameo("alice", "everyone", state="unverified")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.cameo_unverified,
    ),
    (
        "unverified, even for self",
        [cameo("alice", state="unverified")],
        "alice",
        ADULT,
        "generate",
        False,
        Reason.cameo_unverified,
    ),
    (
        "suspended",
        [cameo("alice", "everyone", state="suspended"), grant("alice", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.cameo_suspended,
    ),
    (
        "deleted",
        [cameo("alice", "everyone", state="deleted")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.cameo_deleted,
    ),
    ("no cameo", [], "bob", ADULT, "generate", False, Reason.cameo_not_found),
    (
        "minor, adult with grant",
        [cameo("kid", birth=MINOR), grant("kid", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.minor_protected,
    ),
    (
        "minor, adult mutual with grant",
        [cameo("kid", birth=MINOR), grant("kid", "bob"), *follow("kid", "bob")],
        "bob",
        ADULT,
        "generate",
        True,
        Reason.granted,
    ),
    (
        "minor, mutual adult, mutuals audience",
        [cameo("kid", "mutuals", birth=MINOR), *follow("kid", "bob")],
        "bob",
        ADULT,
        "generate",
        True,
        Reason.audience_mutuals,
    ),
    (
        "minor, minor friend with grant",
        [cameo("kid", birth=MINOR), grant("kid", "pal")],
        "pal",
        MINOR,
        "generate",
        True,
        Reason.granted,
    ),
    (
        "minor, unknown-age actor counts as minor",
        [cameo("kid", birth=MINOR), grant("kid", "pal")],
        "pal",
        None,
        "generate",
        True,
        Reason.granted,
    ),
    (
        "minor blocks mutual",
        [cameo("kid", "mutuals", birth=MINOR), *follow("kid", "bob"), block("kid", "bob")],
        "bob",
        ADULT,
        "generate",
        False,
        Reason.blocked,
    ),
]


@pytest.mark.parametrize(
    ("case", "ops", "actor", "birth", "purpose", "allowed", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_likeness_decision_table(case, ops, actor, birth, purpose, allowed, reason):
    policy = LikenessPolicy()
    policy.bulk_load(revision=1, ops=ops)
    owner = "kid" if case.startswith("minor") else "alice"
    decision = policy.decide(
        actor_id=actor, actor_birth_date=birth, owner_id=owner, purpose=purpose, now=NOW, today=TODAY
    )
    assert (decision.allowed, decision.reason) == (allowed, reason)
    assert decision.revision == 1


@pytest.mark.parametrize(
    ("case", "ops", "actor", "birth", "purpose", "allowed", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_likeness_incremental_equals_bulk(case, ops, actor, birth, purpose, allowed, reason):
    """Applying the same facts one revision at a time gives the same decision as a snapshot load."""
    policy = LikenessPolicy()
    for i, op in enumerate(ops, start=1):
        policy.apply(i, [op])
    owner = "kid" if case.startswith("minor") else "alice"
    decision = policy.decide(
        actor_id=actor, actor_birth_date=birth, owner_id=owner, purpose=purpose, now=NOW, today=TODAY
    )
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_likeness_revocations_take_effect_at_next_revision():
    policy = LikenessPolicy()
    policy.apply(1, [cameo("alice", "everyone"), grant("alice", "bob")])
    steps = [
        ({"op": "ungrant", "owner": "alice", "grantee": "bob"}, True, Reason.audience_everyone),
        (cameo("alice", "mutuals"), False, Reason.not_granted),
        (grant("alice", "bob"), True, Reason.granted),
        (block("alice", "bob"), False, Reason.blocked),
        ({"op": "unblock", "owner": "alice", "actor": "bob"}, True, Reason.granted),
        (cameo("alice", "approved", state="suspended"), False, Reason.cameo_suspended),
    ]
    for rev, (op, allowed, reason) in enumerate(steps, start=2):
        policy.apply(rev, [op])
        d = policy.decide(
            actor_id="bob", actor_birth_date=ADULT, owner_id="alice", purpose="generate", now=NOW, today=TODAY
        )
        assert (d.allowed, d.reason, d.revision) == (allowed, reason, rev)


def test_likeness_audience_change_leaves_one_audience_rule():
    policy = LikenessPolicy()
    for rev, audience in enumerate(["everyone", "mutuals", "only_me", "approved", "everyone"], start=1):
        policy.apply(rev, [cameo("alice", audience)])
    assert policy.rule_count == 1


def test_likeness_regrant_replaces_previous_rule():
    policy = LikenessPolicy()
    policy.apply(1, [cameo("alice"), grant("alice", "bob", ("generate",))])
    policy.apply(2, [grant("alice", "bob", ("remix",))])
    assert policy.rule_count == 1
    d = policy.decide(
        actor_id="bob", actor_birth_date=ADULT, owner_id="alice", purpose="generate", now=NOW, today=TODAY
    )
    assert d.reason is Reason.purpose_not_granted


def test_likeness_revision_gap_is_refused():
    policy = LikenessPolicy()
    policy.apply(1, [cameo("alice")])
    with pytest.raises(ValueError, match="revision gap"):
        policy.apply(3, [grant("alice", "bob")])
    policy.apply(1, [grant("alice", "bob")])  # an old revision is ignored, not re-applied
    assert policy.revision == 1 and policy.rule_count == 0


def test_likeness_unknown_op_is_refused():
    with pytest.raises(ValueError, match="unknown consent op"):
        LikenessPolicy().apply(1, [{"op": "teleport"}])


def test_likeness_decide_all_shares_one_revision():
    policy = LikenessPolicy()
    policy.apply(1, [cameo("alice", "everyone"), cameo("carol")])
    decisions = policy.decide_all(
        actor_id="bob",
        actor_birth_date=ADULT,
        owner_ids=["alice", "carol"],
        purpose="generate",
        now=NOW,
        today=TODAY,
    )
    assert [(d.allowed, d.reason) for d in decisions] == [
        (True, Reason.audience_everyone),
        (False, Reason.not_granted),
    ]
    assert {d.revision for d in decisions} == {1}


@pytest.mark.parametrize(
    ("birth", "minor"), [(date(2008, 6, 1), False), (date(2008, 6, 2), True), (None, True)]
)
def test_is_minor_birthday_boundary(birth, minor):
    assert is_minor(birth, today=TODAY, adult_age=18) is minor


def test_likeness_revoked_since_tracks_each_kind_of_revocation():
    policy = LikenessPolicy()
    policy.apply(1, [cameo("alice", "everyone"), grant("alice", "bob")])
    assert not policy.revoked_since(owner_id="alice", actor_id="bob", revision=1)
    policy.apply(2, [{"op": "block", "owner": "alice", "actor": "carl"}])
    assert policy.revoked_since(owner_id="alice", actor_id="carl", revision=1)
    assert not policy.revoked_since(owner_id="alice", actor_id="bob", revision=1)
    policy.apply(3, [cameo("alice", "everyone")])  # same audience: nothing taken away
    assert not policy.revoked_since(owner_id="alice", actor_id="bob", revision=2)
    policy.apply(4, [cameo("alice", "approved")])  # lowered: every receipt before it is revoked
    assert policy.revoked_since(owner_id="alice", actor_id="bob", revision=3)
    assert not policy.revoked_since(owner_id="alice", actor_id="bob", revision=4)
    history = LikenessPolicy()
    history.note_history(7, [cameo("alice", "everyone")])  # unknown previous state: cautious
    assert history.revoked_since(owner_id="alice", actor_id="bob", revision=6)


def test_compiled_matcher_agrees_with_pycasbins_evaluator():
    """The bytecode matcher and pycasbin's SimpleEval give the same answer on every combination."""
    import itertools

    import casbin
    from casbin.util.expression import SimpleEval

    from policy.likeness import _CompiledMatcher, _not_expired, _purpose_allowed

    policy = LikenessPolicy()
    matcher = policy._enforcer.model["m"]["m"].value
    expr = casbin.Enforcer._get_expression(matcher).expr
    mutual = {("a", "o"), ("o", "a")}
    functions = {
        "isMutual": lambda x, y: (x, y) in mutual,
        "purposeAllowed": _purpose_allowed,
        "notExpired": _not_expired,
    }
    compiled, reference = _CompiledMatcher(expr, functions), SimpleEval(expr, functions)
    seen = set()
    for actor, owner, purpose, p_actor, p_owner, p_purpose, expires, now in itertools.product(
        ["a", "b"],
        ["o", "q"],
        ["generate", "remix"],
        ["a", "@everyone", "@others", "@mutuals", "z"],
        ["o", "q"],
        ["generate", "remix", "generate|remix", "*"],
        ["", "100", "300"],
        [50.0, 200.0, 400.0],
    ):
        names = {
            "r_actor": actor, "r_owner": owner, "r_purpose": purpose, "r_now": now,
            "p_actor": p_actor, "p_owner": p_owner, "p_purpose": p_purpose, "p_expires": expires,
            "p_eft": "allow", "p_reason": "granted",
        }  # fmt: skip
        got = compiled.eval(names)
        assert got == reference.eval(names), names
        seen.add(got)
    assert seen == {True, False}
