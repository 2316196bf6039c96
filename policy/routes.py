"""Route-level RBAC: the Casbin model and policy files beside this module."""

from __future__ import annotations

from pathlib import Path

import casbin

POLICY_DIR = Path(__file__).resolve().parent
ROUTE_MODEL = POLICY_DIR / "route_model.conf"
ROUTE_POLICY = POLICY_DIR / "route_policy.csv"


class RoutePolicy:
    """May a principal of this kind perform `act` on `obj`? Object ownership is checked in services."""

    def __init__(self, *, model: Path = ROUTE_MODEL, policy: Path = ROUTE_POLICY) -> None:
        self._enforcer = casbin.Enforcer(str(model), str(policy))
        # The route policy is fixed for the life of the process and tiny, so
        # each answer is remembered instead of re-evaluating the matcher per request.
        self._answers: dict[tuple[str, str, str], bool] = {}

    def allows(self, *, role: str, obj: str, act: str) -> bool:
        key = (role, obj, act)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = bool(self._enforcer.enforce(role, obj, act))
        return answer
