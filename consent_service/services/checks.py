"""Consent checks for platforms, signed receipts, and receipt status."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlmodel import Session, col, select

from consent_service.audit_writer import AuditWriter
from consent_service.directory import Directory
from consent_service.errors import (
    InvalidRequest,
    NotFound,
    PromptTooLong,
    ReceiptExpired,
    ReceiptInvalid,
    TooManyCameos,
)
from consent_service.models import Cameo, Principal, PrincipalLike
from consent_service.receipts import ReceiptKeys
from consent_service.replica import ConsentReplica
from consent_service.services.changes import Event
from consent_service.services.principals import normalize_handle
from policy.likeness import Decision, Reason


@dataclass(frozen=True)
class CameoDecision:
    handle: str
    cameo_id: str | None
    allowed: bool
    reason: str
    banned_terms: list[str] = field(default_factory=list)
    instructions: str = ""


@dataclass(frozen=True)
class CheckResult:
    check_id: str
    allowed: bool
    decisions: list[CameoDecision]
    revision: int
    receipt: str | None
    receipt_expires_at: int | None


@dataclass(frozen=True)
class CheckLimits:
    max_cameos: int
    max_prompt_chars: int
    receipt_ttl: int
    issuer: str
    adult_age: int


def prompt_sha256(prompt: str) -> str:
    """Hash of the NFC-normalised prompt, so a receipt binds the exact text checked."""
    return hashlib.sha256(unicodedata.normalize("NFC", prompt).encode()).hexdigest()


def _mentions_banned(prompt: str, terms: list[str]) -> bool:
    folded = unicodedata.normalize("NFKC", prompt).casefold()
    return any(term in folded for term in terms)


def _validate(cameo_handles: list[str], prompt: str | None, limits: CheckLimits) -> list[str]:
    handles = list(dict.fromkeys(normalize_handle(h) for h in cameo_handles))
    if not handles:
        raise InvalidRequest("name at least one cameo; an empty check authorizes nothing")
    if len(handles) > limits.max_cameos:
        raise TooManyCameos(f"at most {limits.max_cameos} cameos per check")
    if prompt is not None and len(prompt) > limits.max_prompt_chars:
        raise PromptTooLong(f"prompt is longer than {limits.max_prompt_chars} characters")
    return handles


async def check_consent(
    *,
    directory: Directory,
    replica: ConsentReplica,
    audit: AuditWriter,
    caller: PrincipalLike,
    actor_handle: str,
    cameo_handles: list[str],
    purpose: str,
    prompt: str | None,
    at_least_as_fresh: int | None,
    limits: CheckLimits,
) -> CheckResult:
    """Decide whether the actor may use every named cameo; sign a receipt only if all are allowed.

    The answer is returned only after its audit rows are committed.
    """
    handles = _validate(cameo_handles, prompt, limits)
    if at_least_as_fresh is not None and replica.policy.revision < at_least_as_fresh:
        await asyncio.to_thread(replica.ensure_fresh, at_least_as_fresh)
    people = await directory.users_by_handles([actor_handle, *handles])
    actor = people[actor_handle]
    owners = [people[h] for h in handles]
    now = time.time()
    results, revision = decide_cameos(
        replica, actor=actor, owners=owners, purpose=purpose, prompt=prompt, now=now
    )
    allowed = all(r.allowed for r in results)
    check_id = secrets.token_hex(16)  # 128 random bits, as uuid4().hex gave, at a quarter of its cost
    digest = prompt_sha256(prompt) if prompt is not None else None
    details = {"check_id": check_id, "caller": caller.id, "purpose": purpose, "prompt_sha256": digest}
    events = [
        Event(
            "consent.check",
            actor.id,
            owner.id,
            decision="allow" if r.allowed else "deny",
            reason=r.reason,
            details=details,
        )
        for owner, r in zip(owners, results, strict=True)
    ]
    claims = expires = None
    if allowed:
        expires = int(now) + limits.receipt_ttl
        claims = {
            "iss": limits.issuer,
            "jti": check_id,
            "sub": actor.id,
            "azp": caller.id,
            "cameos": [r.cameo_id for r in results],
            "purpose": purpose,
            "prompt_sha256": digest,
            "rev": revision,
            "iat": int(now),
            "exp": expires,
        }
    # The writer signs the receipt once the rows are committed, off the event loop where it can.
    receipt = await audit.append(events, revision=revision, receipt=claims)
    return CheckResult(check_id, allowed, results, revision, receipt, expires)


def decide_now(
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owner_ids: list[str],
    purpose: str,
    now: float | None = None,
) -> list[Decision]:
    """The policy's decision for each owner's cameo, for this actor, at this instant and today's date."""
    return replica.policy.decide_all(
        actor_id=actor.id,
        actor_birth_date=actor.birth_date,
        owner_ids=owner_ids,
        purpose=purpose,
        now=time.time() if now is None else now,
        today=date.today(),
    )


def decide_cameos(
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owners: list[Any],
    purpose: str,
    prompt: str | None,
    now: float | None = None,
) -> tuple[list[CameoDecision], int]:
    """Decisions for each owner's cameo at one revision, with banned terms applied to the prompt."""
    decisions = decide_now(replica, actor=actor, owner_ids=[o.id for o in owners], purpose=purpose, now=now)
    results = [_result(owner, d, prompt) for owner, d in zip(owners, decisions, strict=True)]
    return results, decisions[0].revision if decisions else replica.policy.revision


def _result(owner: PrincipalLike, decision: Decision, prompt: str | None) -> CameoDecision:
    terms = list(decision.restrictions.get("banned_terms", []))
    instructions = str(decision.restrictions.get("instructions", ""))
    cameo_id = decision.cameo_id
    allowed, reason = decision.allowed, decision.reason.value
    if (
        allowed
        and prompt is not None
        and decision.reason is not Reason.self_use
        and _mentions_banned(prompt, terms)
    ):
        allowed, reason = False, Reason.content_restricted.value
    return CameoDecision(owner.handle, cameo_id, allowed, reason, terms, instructions)


ALLOWING = {
    r.value for r in (Reason.self_use, Reason.granted, Reason.audience_everyone, Reason.audience_mutuals)
}


@dataclass(frozen=True)
class ReceiptStatus:
    valid: bool
    status: str
    revision: int
    reasons: dict[str, str]
    claims: dict[str, Any]


def receipt_status(
    session: Session, replica: ConsentReplica, keys: ReceiptKeys, *, token: str
) -> ReceiptStatus:
    """Is a receipt still good now? Forged or malformed ones raise; expired or revoked say so."""
    now = time.time()
    try:
        claims = keys.verify(token, now=now)
    except ReceiptExpired:
        claims = keys.verify(token, now=0)
        return ReceiptStatus(False, "expired", replica.policy.revision, {}, _public(claims))
    try:
        rev, cameo_ids, actor_id = int(claims["rev"]), list(claims["cameos"]), str(claims["sub"])
        purpose = str(claims["purpose"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptInvalid("receipt lacks required claims") from exc
    replica.ensure_fresh(rev)
    actor = session.get(Principal, actor_id)
    cameos = {c.id: c for c in session.exec(select(Cameo).where(col(Cameo.id).in_(cameo_ids))).all()}
    if actor is None or len(cameos) != len(set(cameo_ids)):
        raise NotFound("a principal or cameo named in the receipt no longer exists")
    owner_ids = [cameos[c].owner_id for c in cameo_ids]
    decisions = decide_now(replica, actor=actor, owner_ids=owner_ids, purpose=purpose, now=now)
    reasons = {}
    for cameo_id, d in zip(cameo_ids, decisions, strict=True):
        revoked = replica.policy.revoked_since(
            owner_id=cameos[cameo_id].owner_id, actor_id=actor.id, revision=rev
        )
        reasons[cameo_id] = "revoked_since_issued" if d.allowed and revoked else d.reason.value
    valid = all(r in ALLOWING for r in reasons.values())
    return ReceiptStatus(
        valid, "valid" if valid else "revoked", decisions[0].revision, reasons, _public(claims)
    )


def _public(claims: dict[str, Any]) -> dict[str, Any]:
    """Only pseudonymous ids and times; the status answer carries no personal data."""
    keep = ("jti", "cameos", "purpose", "rev", "iat", "exp")
    return {k: claims[k] for k in keep if k in claims}
