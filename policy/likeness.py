"""Typed likeness-consent enforcer over the Casbin model in `likeness_model.conf`.

The database is the source of truth. This object holds an in-memory replica
that is changed only by `apply(revision, ops)` in revision order, so every
decision is answered at exactly one known `revision`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from sys import intern
from typing import Any

import casbin
from casbin.model import Model

from policy.index import ACTOR, PairIndexedPolicy, Rule

MODEL_PATH = Path(__file__).with_name("likeness_model.conf")
ANY_PURPOSE = "*"


class Reason(StrEnum):
    """Reason codes a platform can act on; stable API."""

    self_use = "self"
    granted = "granted"
    audience_everyone = "audience_everyone"
    audience_mutuals = "audience_mutuals"
    blocked = "blocked"
    audience_only_me = "audience_only_me"
    not_granted = "not_granted"
    grant_expired = "grant_expired"
    purpose_not_granted = "purpose_not_granted"
    cameo_unverified = "cameo_unverified"
    cameo_suspended = "cameo_suspended"
    cameo_deleted = "cameo_deleted"
    cameo_not_found = "cameo_not_found"
    minor_protected = "minor_protected"
    content_restricted = "content_restricted"


@dataclass(frozen=True, slots=True)
class OwnerState:
    cameo_id: str
    state: str
    audience: str
    birth_date: date | None
    banned_terms: tuple[str, ...] = ()
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason
    revision: int
    restrictions: Mapping[str, Any] = field(default_factory=dict)
    cameo_id: str | None = None


def is_minor(birth_date: date | None, *, today: date, adult_age: int) -> bool:
    """Unknown birth dates are treated as minors: the protective default."""
    if birth_date is None:
        return True
    years = today.year - birth_date.year - ((today.month, today.day) < (birth_date.month, birth_date.day))
    return years < adult_age


class _NullMap(dict):
    """pycasbin records every rule's list position in `policy_map`, used only by
    update_policy, which we never call; at 1M rules that is ~150 MB for nothing."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


class _LikenessModel(Model):
    def add_def(self, sec: str, key: str, value: Any) -> Any:
        added = super().add_def(sec, key, value)
        if sec == "p" and key == "p":
            self.model["p"]["p"].policy = PairIndexedPolicy()
            self.model["p"]["p"].policy_map = _NullMap()
        return added


class _CompiledMatcher:
    """The matcher as Python bytecode: pycasbin's SimpleEval walks its AST, about
    fourteen nodes per policy row and a third of a decision's time. The model file
    ships with the service; request and policy values are bound as names, never
    parsed, so compiling it admits no input as code."""

    def __init__(self, expr: str, functions: dict[str, Any]) -> None:
        self._code = compile(expr.strip(), "<likeness matcher>", "eval")
        self._globals: dict[str, Any] = {"__builtins__": {}, **(functions or {})}

    def eval(self, names: dict[str, Any]) -> Any:
        return eval(self._code, self._globals, names)  # noqa: S307 - see the class docstring


class _CachedExpressionEnforcer(casbin.Enforcer):
    """pycasbin re-parses the matcher into an AST on every enforce call; our
    matcher and function map never change after construction, so it is compiled
    once. Safe because LikenessPolicy serialises all calls under one lock."""

    _expr_cache: dict[str, Any]

    def _get_expression(self, expr: str, functions: Any = None) -> Any:
        cache = self.__dict__.setdefault("_expr_cache", {})
        if expr not in cache:
            # pycasbin's own rewriting of && || ! and its parse (its syntax errors) first.
            cache[expr] = _CompiledMatcher(casbin.Enforcer._get_expression(expr, functions).expr, functions)
        return cache[expr]


class _FilterScope:
    """Restricts the policy rows to one (owner, actor) pair for the duration of a with-block."""

    __slots__ = ("_actor", "_owner", "_policy")

    def __init__(self, policy: PairIndexedPolicy, owner_id: str, actor_id: str) -> None:
        self._policy, self._owner, self._actor = policy, owner_id, actor_id

    def __enter__(self) -> list[Rule]:
        return self._policy.apply_filter(self._owner, self._actor)

    def __exit__(self, *exc: object) -> None:
        self._policy.clear_filter()


def _purpose_allowed(requested: str, allowed: str) -> bool:
    return allowed == ANY_PURPOSE or requested in allowed.split("|")


def _not_expired(expires: str, now: float) -> bool:
    return expires == "" or now < float(expires)


def _why_not(rows: list[Rule], actor_id: str, purpose: str, now: float) -> Reason:
    """Why the pair's grant, if it has one among the rows the decision saw, did not allow.

    From those rows, not another lookup in the map of a million grants: at 1M that lookup
    missed memory, 0.21 against 0.05 µs at 1k, on every denial."""
    for rule in rows:
        if rule[ACTOR] == actor_id and rule[5] == Reason.granted.value:
            if not _not_expired(rule[3], now):
                return Reason.grant_expired
            if not _purpose_allowed(purpose, rule[2]):
                return Reason.purpose_not_granted
    return Reason.not_granted


class LikenessPolicy:
    """The in-memory consent replica: decide, and apply changes in revision order."""

    def __init__(self, *, adult_age: int = 18, model_path: Path = MODEL_PATH) -> None:
        self._lock = threading.RLock()
        self._adult_age = adult_age
        self._owners: dict[str, OwnerState] = {}
        self._grants: dict[tuple[str, str], Rule] = {}
        self._following: dict[str, set[str]] = {}
        # Revision of the latest change that took consent away, per owner and per (owner, actor):
        # a receipt issued before it no longer holds, even if consent was given again since.
        self._revoked_owner: dict[str, int] = {}
        self._revoked_pair: dict[tuple[str, str], int] = {}
        self._revision = 0
        model = _LikenessModel()
        model.load_model(str(model_path))
        self._enforcer = _CachedExpressionEnforcer(model)
        self._enforcer.add_function("isMutual", self.is_mutual)
        self._enforcer.add_function("purposeAllowed", _purpose_allowed)
        self._enforcer.add_function("notExpired", _not_expired)
        self._policy: PairIndexedPolicy = model.model["p"]["p"].policy

    # -- reading ---------------------------------------------------------
    @property
    def revision(self) -> int:
        return self._revision

    @property
    def rule_count(self) -> int:
        return len(self._policy)

    def owner(self, owner_id: str) -> OwnerState | None:
        return self._owners.get(owner_id)

    def is_mutual(self, a: str, b: str) -> bool:
        return b in self._following.get(a, ()) and a in self._following.get(b, ())

    def decide(
        self,
        *,
        actor_id: str,
        actor_birth_date: date | None,
        owner_id: str,
        purpose: str,
        now: float,
        today: date,
    ) -> Decision:
        """Decide one (actor, cameo owner, purpose); never raises for a denial."""
        with self._lock:
            revision = self._revision
            owner = self._owners.get(owner_id)
            if owner is None:
                return Decision(False, Reason.cameo_not_found, revision)
            restrictions = {"banned_terms": list(owner.banned_terms), "instructions": owner.instructions}
            cameo = owner.cameo_id
            reason = self._precheck(owner, actor_id, actor_birth_date, owner_id, today)
            if reason is not None:
                return Decision(reason is Reason.self_use, reason, revision, restrictions, cameo)
            with self._filtered(owner_id, actor_id) as rows:
                allowed, rule = self._enforcer.enforce_ex(actor_id, owner_id, purpose, now)
            if allowed:
                return Decision(True, Reason(rule[5]), revision, restrictions, cameo)
            if rule and rule[4] == "deny":
                return Decision(False, Reason(rule[5]), revision, restrictions, cameo)
            why = _why_not(rows, actor_id, purpose, now)
            return Decision(False, why, revision, restrictions, cameo)

    def decide_all(
        self,
        *,
        actor_id: str,
        actor_birth_date: date | None,
        owner_ids: list[str],
        purpose: str,
        now: float,
        today: date,
    ) -> list[Decision]:
        """Decide several cameos at one and the same revision."""
        with self._lock:
            return [
                self.decide(
                    actor_id=actor_id,
                    actor_birth_date=actor_birth_date,
                    owner_id=owner_id,
                    purpose=purpose,
                    now=now,
                    today=today,
                )
                for owner_id in owner_ids
            ]

    def _precheck(
        self, owner: OwnerState, actor_id: str, actor_birth_date: date | None, owner_id: str, today: date
    ) -> Reason | None:
        if owner.state != "verified":
            return {
                "deleted": Reason.cameo_deleted,
                "suspended": Reason.cameo_suspended,
            }.get(owner.state, Reason.cameo_unverified)
        if actor_id == owner_id:
            return Reason.self_use
        owner_minor = is_minor(owner.birth_date, today=today, adult_age=self._adult_age)
        actor_adult = not is_minor(actor_birth_date, today=today, adult_age=self._adult_age)
        if owner_minor and actor_adult and not self.is_mutual(actor_id, owner_id):
            return Reason.minor_protected
        return None

    def _filtered(self, owner_id: str, actor_id: str) -> _FilterScope:
        return _FilterScope(self._policy, owner_id, actor_id)

    # -- changing ----------------------------------------------------------
    def apply(self, revision: int, ops: Iterable[Mapping[str, Any]]) -> None:
        """Apply one revision's changes; revisions must arrive in order, once each."""
        with self._lock:
            if revision <= self._revision:
                return
            if revision != self._revision + 1:
                raise ValueError(f"revision gap: have {self._revision}, got {revision}")
            for op in ops:
                self._note_revocation(revision, op, self._owners.get(op.get("owner", "")))
                self._apply_op(op)
            self._revision = revision

    def note_history(self, revision: int, ops: Iterable[Mapping[str, Any]]) -> None:
        """Record revocations from changes older than a snapshot (their previous state is unknown,
        so every cameo change counts as one: the cautious reading)."""
        with self._lock:
            for op in ops:
                self._note_revocation(revision, op, None, cautious=True)

    def revoked_since(self, *, owner_id: str, actor_id: str, revision: int) -> bool:
        """Did any change after `revision` take this actor's consent for this owner away?"""
        latest = max(self._revoked_owner.get(owner_id, 0), self._revoked_pair.get((owner_id, actor_id), 0))
        return latest > revision

    def _note_revocation(
        self, revision: int, op: Mapping[str, Any], before: OwnerState | None, *, cautious: bool = False
    ) -> None:
        kind = op["op"]
        if kind in ("ungrant", "grant"):  # a replaced grant may be narrower
            self._revoked_pair[(op["owner"], op["grantee"])] = revision
        elif kind == "block":
            self._revoked_pair[(op["owner"], op["actor"])] = revision
        elif kind == "unfollow":  # ends mutual status in both directions
            self._revoked_pair[(op["followee"], op["follower"])] = revision
            self._revoked_pair[(op["follower"], op["followee"])] = revision
        elif kind == "cameo":
            order = ["only_me", "approved", "mutuals", "everyone"]
            lowered = before is not None and order.index(op["audience"]) < order.index(before.audience)
            left = before is not None and before.state == "verified" and op["state"] != "verified"
            if cautious or lowered or left:
                self._revoked_owner[op["owner"]] = revision

    def bulk_load(self, *, revision: int, ops: Iterable[Mapping[str, Any]]) -> None:
        """Load a snapshot taken at `revision` into an empty replica."""
        with self._lock:
            for op in ops:
                self._apply_op(op, bulk=True)
            self._revision = revision

    def _add(self, rule: Rule, *, bulk: bool) -> None:
        if bulk:
            self._policy.append(rule)
        else:
            self._enforcer.add_policy(*rule)

    def _remove(self, rule: Rule) -> None:
        self._enforcer.remove_policy(*rule)

    def _apply_op(self, op: Mapping[str, Any], *, bulk: bool = False) -> None:
        # Ids are interned where they are stored (as PrincipalRef.id is where callers get them):
        # at 1M rules a decision's time goes to memory misses, and an equal but distinct string
        # is one more, compared byte by byte. With the flat index (policy/index.py): at 1M,
        # mean decision 0.0142 against 0.0157 ms and 660 against 765 MB (bench/consent_check.py).
        # The few distinct purpose lists, states and audiences are interned for the same reason.
        kind = op["op"]
        if kind == "cameo":
            self._set_owner(op, bulk=bulk)
        elif kind == "grant":
            key = (intern(op["owner"]), intern(op["grantee"]))
            if (old := self._grants.pop(key, None)) is not None:
                self._remove(old)
            purposes = intern("|".join(sorted(op["purposes"])) or ANY_PURPOSE)
            expires = "" if op.get("expires") is None else repr(float(op["expires"]))
            rule = (key[1], key[0], purposes, expires, "allow", Reason.granted.value)
            self._grants[key] = rule
            self._add(rule, bulk=bulk)
        elif kind == "ungrant":
            if (old := self._grants.pop((op["owner"], op["grantee"]), None)) is not None:
                self._remove(old)
        elif kind == "block":
            self._add(self._block_rule(op), bulk=bulk)
        elif kind == "unblock":
            self._remove(self._block_rule(op))
        elif kind == "follow":
            self._following.setdefault(intern(op["follower"]), set()).add(intern(op["followee"]))
        elif kind == "unfollow":
            self._following.get(op["follower"], set()).discard(op["followee"])
        else:
            raise ValueError(f"unknown consent op {kind!r}")

    @staticmethod
    def _block_rule(op: Mapping[str, Any]) -> Rule:
        return (intern(op["actor"]), intern(op["owner"]), ANY_PURPOSE, "", "deny", Reason.blocked.value)

    _AUDIENCE_RULES = {
        "everyone": ("@everyone", "allow", Reason.audience_everyone),
        "mutuals": ("@mutuals", "allow", Reason.audience_mutuals),
        "only_me": ("@others", "deny", Reason.audience_only_me),
    }

    def _audience_rule(self, owner_id: str, audience: str) -> Rule | None:
        spec = self._AUDIENCE_RULES.get(audience)
        if spec is None:
            return None
        actor, eft, reason = spec
        return (actor, owner_id, ANY_PURPOSE, "", eft, reason.value)

    def _set_owner(self, op: Mapping[str, Any], *, bulk: bool) -> None:
        owner_id = intern(op["owner"])
        previous = self._owners.get(owner_id)
        if previous is not None and (old := self._audience_rule(owner_id, previous.audience)):
            self._remove(old)
        birth = op.get("birth_date")
        self._owners[owner_id] = OwnerState(
            cameo_id=op["cameo"],
            state=intern(op["state"]),
            audience=intern(op["audience"]),
            birth_date=date.fromisoformat(birth) if birth else None,
            banned_terms=tuple(op.get("banned_terms", ())),
            instructions=op.get("instructions", ""),
        )
        if (new := self._audience_rule(owner_id, op["audience"])) is not None:
            self._add(new, bulk=bulk)
