"""Route-level RBAC, table-driven over policy/route_model.conf and route_policy.csv."""

import pytest

from policy.routes import RoutePolicy

ROLES = ["user", "platform", "auditor", "admin"]
# (object, action) -> roles allowed
EXPECTED = {
    ("self", "read"): {"user", "platform", "auditor", "admin"},
    ("cameo", "read"): {"user"},
    ("cameo", "write"): {"user"},
    ("cameo", "moderate"): {"admin"},
    ("follow", "read"): {"user"},
    ("follow", "write"): {"user"},
    ("consent_check", "create"): {"platform"},
    ("principal", "create"): {"admin"},
    ("principal", "revoke"): {"admin"},
    ("guardian", "write"): {"admin"},
    ("audit", "read"): {"auditor", "admin"},
    ("audit", "write"): set(),
}


@pytest.mark.parametrize(("obj", "act"), list(EXPECTED))
@pytest.mark.parametrize("role", ROLES)
def test_route_policy_table(role, obj, act):
    assert RoutePolicy().allows(role=role, obj=obj, act=act) is (role in EXPECTED[(obj, act)])


def test_route_policy_unknown_role_denied():
    assert RoutePolicy().allows(role="stranger", obj="self", act="read") is False
