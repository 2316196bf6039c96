"""Cameos: creation, owner settings, state changes, and who may see or change them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from consent_service.db import writes
from consent_service.errors import (
    CameoExists,
    CameoNotFound,
    Forbidden,
    InvalidRequest,
    MinorAudienceForbidden,
)
from consent_service.models import (
    AUDIENCE_ORDER,
    Audience,
    Cameo,
    CameoState,
    LikenessGrant,
    Principal,
    PrincipalKind,
    PrincipalLike,
    utcnow,
)
from consent_service.replica import ConsentReplica, cameo_op
from consent_service.services.changes import Event, commit_change
from consent_service.services.principals import get_by_handle, is_guardian_of
from consent_service.services.verification import Destroyed, destroy_biometrics, remove_files
from policy.likeness import is_minor

MAX_BANNED_TERMS = 200
MAX_TERM_CHARS = 100


@dataclass(frozen=True)
class CameoChange:
    cameo: Cameo
    owner: PrincipalLike
    revision: int
    destroyed: Destroyed | None = None


def owner_minor(owner: Principal, *, adult_age: int) -> bool:
    return is_minor(owner.birth_date, today=date.today(), adult_age=adult_age)


# Built once, as principals._BY_HANDLE is: building it cost more than running it.
_CAMEO_OF = select(Cameo).where(col(Cameo.owner_id) == bindparam("owner_id"))


def load_cameo(session: Session, *, handle: str) -> tuple[Principal, Cameo]:
    """The owner and cameo for a handle, or CameoNotFound."""
    owner = get_by_handle(session, handle=handle)
    cameo = session.exec(_CAMEO_OF, params={"owner_id": owner.id}).first()
    if cameo is None:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    return owner, cameo


def authorize_change(
    session: Session, *, actor: PrincipalLike, owner: Principal, tightening: bool, adult_age: int
) -> None:
    """Only the owner changes consent; a minor's guardian may only tighten it."""
    if actor.id == owner.id:
        return
    if (
        tightening
        and owner_minor(owner, adult_age=adult_age)
        and is_guardian_of(session, guardian_id=actor.id, minor_id=owner.id)
    ):
        return
    raise Forbidden("only the cameo's owner, or a minor's guardian revoking, may change its consent")


def authorize_view(session: Session, *, viewer: PrincipalLike, owner: Principal, adult_age: int) -> None:
    """The owner, a minor's guardian, and admins may see a cameo's settings."""
    if viewer.id == owner.id or viewer.kind is PrincipalKind.admin:
        return
    if owner_minor(owner, adult_age=adult_age) and is_guardian_of(
        session, guardian_id=viewer.id, minor_id=owner.id
    ):
        return
    raise Forbidden("you may only see your own cameo")


@writes
def create_cameo(session: Session, replica: ConsentReplica, *, actor: PrincipalLike) -> CameoChange:
    """Create the actor's one cameo (unverified, audience only_me), or revive a deleted one."""
    if actor.kind is not PrincipalKind.user:
        raise Forbidden("only users have cameos")
    cameo = session.exec(select(Cameo).where(Cameo.owner_id == actor.id)).first()
    if cameo is not None and cameo.state is not CameoState.deleted:
        raise CameoExists("you already have a cameo")
    if cameo is None:
        cameo = Cameo(owner_id=actor.id)
    else:
        cameo.state, cameo.audience, cameo.banned_terms, cameo.instructions = (
            CameoState.unverified,
            Audience.only_me,
            [],
            "",
        )
        cameo.updated_at = utcnow()
    session.add(cameo)
    session.flush()
    revision = commit_change(
        session, replica, ops=[cameo_op(cameo, actor)], events=[Event("cameo.create", actor.id, actor.id)]
    )
    return CameoChange(cameo, actor, revision)


def get_cameo(
    session: Session, *, viewer: PrincipalLike, handle: str, adult_age: int
) -> tuple[Principal, Cameo]:
    """A cameo's settings, for its owner, a minor's guardian or an admin."""
    owner, cameo = load_cameo(session, handle=handle)
    authorize_view(session, viewer=viewer, owner=owner, adult_age=adult_age)
    return owner, cameo


def _clean_terms(terms: list[str]) -> list[str]:
    cleaned = sorted({t.strip().casefold() for t in terms if t.strip()})
    if len(cleaned) > MAX_BANNED_TERMS or any(len(t) > MAX_TERM_CHARS for t in cleaned):
        raise InvalidRequest(f"at most {MAX_BANNED_TERMS} banned terms of {MAX_TERM_CHARS} characters")
    return cleaned


@writes
def update_settings(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    handle: str,
    audience: Audience | None = None,
    banned_terms: list[str] | None = None,
    instructions: str | None = None,
    adult_age: int,
) -> CameoChange:
    """Change audience and content restrictions; lowering the audience revokes at once."""
    owner, cameo = load_cameo(session, handle=handle)
    if cameo.state is CameoState.deleted:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    tightening = (
        banned_terms is None
        and instructions is None
        and (audience is None or AUDIENCE_ORDER.index(audience) <= AUDIENCE_ORDER.index(cameo.audience))
    )
    authorize_change(session, actor=actor, owner=owner, tightening=tightening, adult_age=adult_age)
    if audience is Audience.everyone and owner_minor(owner, adult_age=adult_age):
        raise MinorAudienceForbidden("a minor's cameo cannot be open to everyone")
    before = {"audience": str(cameo.audience)}
    if audience is not None:
        cameo.audience = audience
    if banned_terms is not None:
        cameo.banned_terms = _clean_terms(banned_terms)
    if instructions is not None:
        cameo.instructions = instructions.strip()
    cameo.updated_at = utcnow()
    session.add(cameo)
    session.flush()
    event = Event(
        "cameo.settings",
        actor.id,
        owner.id,
        details={"before": before, "audience": str(cameo.audience), "banned_terms": len(cameo.banned_terms)},
    )
    lowered = AUDIENCE_ORDER.index(cameo.audience) < AUDIENCE_ORDER.index(Audience(before["audience"]))
    revoked = {"cameo_id": cameo.id, "reason": "audience_lowered"} if lowered else None
    revision = commit_change(session, replica, ops=[cameo_op(cameo, owner)], events=[event], revoked=revoked)
    return CameoChange(cameo, owner, revision)


@writes
def set_state(
    session: Session,
    replica: ConsentReplica,
    *,
    actor_id: str | None,
    handle: str,
    state: CameoState,
    reason: str = "",
) -> CameoChange:
    """Move a cameo to a state. Not a public route for `verified`: verification and admins call it."""
    owner, cameo = load_cameo(session, handle=handle)
    if cameo.state is CameoState.deleted and state is not CameoState.deleted:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    ops = []
    if state is CameoState.deleted:
        grants = session.exec(select(LikenessGrant).where(LikenessGrant.cameo_id == cameo.id)).all()
        for grant in grants:
            ops.append({"op": "ungrant", "owner": owner.id, "grantee": grant.grantee_id})
            session.delete(grant)
    before = str(cameo.state)
    cameo.state = state
    cameo.updated_at = utcnow()
    session.add(cameo)
    session.flush()
    ops.append(cameo_op(cameo, owner))
    event = Event(f"cameo.{state}", actor_id, owner.id, details={"before": before, "reason": reason})
    gone = state in (CameoState.deleted, CameoState.suspended) and before == str(CameoState.verified)
    revoked = {"cameo_id": cameo.id, "reason": f"cameo_{state}"} if gone else None
    revision = commit_change(session, replica, ops=ops, events=[event], revoked=revoked)
    return CameoChange(cameo, owner, revision)


@writes
def delete_cameo(
    session: Session, replica: ConsentReplica, *, actor: PrincipalLike, handle: str, adult_age: int
) -> CameoChange:
    """Delete a cameo: every check is denied from the next revision on, its grants are dropped,
    and its face and voice templates and any kept uploads are destroyed in the same transaction."""
    owner, cameo = load_cameo(session, handle=handle)
    authorize_change(session, actor=actor, owner=owner, tightening=True, adult_age=adult_age)
    if cameo.state is CameoState.deleted:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    destroyed = destroy_biometrics(session, cameo_id=cameo.id, actor_id=actor.id, owner_id=owner.id)
    change = set_state(session, replica, actor_id=actor.id, handle=handle, state=CameoState.deleted)
    remove_files(destroyed.uploads)
    return CameoChange(change.cameo, change.owner, change.revision, destroyed)


@writes
def moderate(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    handle: str,
    suspend: bool,
    reason: str,
) -> CameoChange:
    """Admin suspension or reinstatement; reinstating returns the cameo to unverified."""
    if actor.kind is not PrincipalKind.admin:
        raise Forbidden("only admins moderate cameos")
    state = CameoState.suspended if suspend else CameoState.unverified
    return set_state(session, replica, actor_id=actor.id, handle=handle, state=state, reason=reason)
