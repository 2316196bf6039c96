"""Per-person likeness grants, blocks, and follows (mutuals are two opposite follows)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam
from sqlmodel import Session, select

from consent_service.db import writes
from consent_service.errors import CameoNotFound, InvalidRequest, NotFound
from consent_service.models import (
    Block,
    CameoState,
    Follow,
    LikenessGrant,
    Principal,
    PrincipalKind,
    PrincipalLike,
    new_id,
    utcnow,
)
from consent_service.replica import ConsentReplica, grant_op
from consent_service.services.cameos import authorize_change, authorize_view, load_cameo
from consent_service.services.changes import Event, commit_change, current_revision
from consent_service.services.principals import get_by_handle


class Purpose(StrEnum):
    generate = "generate"
    remix = "remix"
    edit = "edit"


@dataclass(frozen=True)
class GrantView:
    grantee_handle: str
    purposes: list[str]
    expires_at: datetime | None
    created_at: datetime


# Grant and revoke write their row through the table, not the ORM: its unit of work (change
# tracking, flush planning, the identity map) took 1.4 of a 5.9 ms grant at the median for this
# one row on the ninth sitting's machine, and the grant goal is p99 <= 5 ms (bench/HTTP_LOG.md).
# The statements are built once, as building one costs more than SQLite takes to run it.
_GRANTS = LikenessGrant.__table__  # type: ignore[attr-defined]
_PAIR = (_GRANTS.c.cameo_id == bindparam("pair_cameo")) & (_GRANTS.c.grantee_id == bindparam("pair_grantee"))
_GRANT_CREATED_AT = select(_GRANTS.c.created_at).where(_PAIR)
_GRANT_INSERT = _GRANTS.insert()
_GRANT_UPDATE = _GRANTS.update().where(_PAIR)
_GRANT_DELETE = _GRANTS.delete().where(_PAIR)


def _pair(*, cameo_id: str, grantee_id: str) -> dict[str, str]:
    return {"pair_cameo": cameo_id, "pair_grantee": grantee_id}


def _user(session: Session, handle: str) -> Principal:
    person = get_by_handle(session, handle=handle)
    if person.kind is not PrincipalKind.user:
        raise InvalidRequest(f"@{person.handle} is not a user")
    return person


@writes
def grant_access(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owner_handle: str,
    grantee_handle: str,
    purposes: Sequence[Purpose],
    expires_at: datetime | None,
    adult_age: int,
) -> tuple[GrantView, int]:
    """Approve a person for the given purposes, replacing any earlier grant to them."""
    owner, cameo = load_cameo(session, handle=owner_handle)
    authorize_change(session, actor=actor, owner=owner, tightening=False, adult_age=adult_age)
    if cameo.state is CameoState.deleted:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    if not purposes:
        raise InvalidRequest("a grant needs at least one purpose; an empty scope authorizes nothing")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise InvalidRequest("expires_at is in the past")
    grantee = _user(session, grantee_handle)
    if grantee.id == owner.id:
        raise InvalidRequest("you always may use your own cameo")
    scope = sorted({str(p) for p in purposes})
    pair = _pair(cameo_id=cameo.id, grantee_id=grantee.id)
    created_at = session.execute(_GRANT_CREATED_AT, pair).scalar()
    if created_at is None:
        created_at = utcnow()
        session.execute(
            _GRANT_INSERT,
            {
                "id": new_id(),
                "cameo_id": cameo.id,
                "grantee_id": grantee.id,
                "purposes": scope,
                "expires_at": expires_at,
                "created_at": created_at,
            },
        )
    else:
        session.execute(_GRANT_UPDATE, {**pair, "purposes": scope, "expires_at": expires_at})
    event = Event(
        "grant.create",
        actor.id,
        owner.id,
        decision="allow",
        details={
            "grantee": grantee.id,
            "purposes": scope,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    revision = commit_change(
        session,
        replica,
        ops=[grant_op(owner_id=owner.id, grantee_id=grantee.id, purposes=scope, expires_at=expires_at)],
        events=[event],
    )
    view = GrantView(grantee.handle, scope, expires_at, created_at)
    return view, revision


@writes
def revoke_access(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owner_handle: str,
    grantee_handle: str,
    adult_age: int,
) -> int:
    """Remove a person's grant; the next check anywhere at this revision denies."""
    owner, cameo = load_cameo(session, handle=owner_handle)
    authorize_change(session, actor=actor, owner=owner, tightening=True, adult_age=adult_age)
    grantee = get_by_handle(session, handle=grantee_handle)
    gone = session.execute(_GRANT_DELETE, _pair(cameo_id=cameo.id, grantee_id=grantee.id))
    if cast(CursorResult[Any], gone).rowcount == 0:
        raise NotFound(f"@{grantee.handle} has no grant")
    event = Event("grant.revoke", actor.id, owner.id, decision="deny", details={"grantee": grantee.id})
    return commit_change(
        session,
        replica,
        ops=[{"op": "ungrant", "owner": owner.id, "grantee": grantee.id}],
        events=[event],
        revoked={"cameo_id": cameo.id, "actor_id": grantee.id, "reason": "grant_revoked"},
    )


def list_grants(
    session: Session, *, viewer: PrincipalLike, owner_handle: str, adult_age: int
) -> list[GrantView]:
    """Grants on a cameo, for its owner or a minor's guardian."""
    owner, cameo = load_cameo(session, handle=owner_handle)
    authorize_view(session, viewer=viewer, owner=owner, adult_age=adult_age)
    rows = session.exec(
        select(LikenessGrant, Principal)
        .join(Principal, LikenessGrant.grantee_id == Principal.id)  # type: ignore[arg-type]
        .where(LikenessGrant.cameo_id == cameo.id)
        .order_by(Principal.handle)
    ).all()
    return [GrantView(p.handle, list(g.purposes), g.expires_at, g.created_at) for g, p in rows]


def _owner_cameo_person(
    session: Session,
    *,
    actor: PrincipalLike,
    owner_handle: str,
    person: str,
    tightening: bool,
    adult_age: int,
) -> tuple[Principal, Any, Principal]:
    """The cameo being changed, after the authorization check, and the other person named."""
    owner, cameo = load_cameo(session, handle=owner_handle)
    authorize_change(session, actor=actor, owner=owner, tightening=tightening, adult_age=adult_age)
    return owner, cameo, get_by_handle(session, handle=person)


@writes
def block(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owner_handle: str,
    blocked_handle: str,
    adult_age: int,
) -> int:
    """Block a person from the cameo whatever the audience or grants say."""
    owner, cameo, blocked = _owner_cameo_person(
        session,
        actor=actor,
        owner_handle=owner_handle,
        person=blocked_handle,
        tightening=True,
        adult_age=adult_age,
    )
    if blocked.id == owner.id:
        raise InvalidRequest("you cannot block yourself")
    if session.get(Block, (cameo.id, blocked.id)) is not None:
        return current_revision(session)  # blocked already: no change, so no event and no revision
    session.add(Block(cameo_id=cameo.id, blocked_id=blocked.id))
    session.flush()
    event = Event(
        "block.create", actor.id, owner.id, decision="deny", reason="blocked", details={"blocked": blocked.id}
    )
    return commit_change(
        session,
        replica,
        ops=[{"op": "block", "owner": owner.id, "actor": blocked.id}],
        events=[event],
        revoked={"cameo_id": cameo.id, "actor_id": blocked.id, "reason": "blocked"},
    )


@writes
def unblock(
    session: Session,
    replica: ConsentReplica,
    *,
    actor: PrincipalLike,
    owner_handle: str,
    blocked_handle: str,
    adult_age: int,
) -> int:
    """Lift a block (only the owner: it loosens consent)."""
    owner, cameo, blocked = _owner_cameo_person(
        session,
        actor=actor,
        owner_handle=owner_handle,
        person=blocked_handle,
        tightening=False,
        adult_age=adult_age,
    )
    row = session.get(Block, (cameo.id, blocked.id))
    if row is None:
        raise NotFound(f"@{blocked.handle} is not blocked")
    session.delete(row)
    event = Event("block.remove", actor.id, owner.id, details={"blocked": blocked.id})
    return commit_change(
        session, replica, ops=[{"op": "unblock", "owner": owner.id, "actor": blocked.id}], events=[event]
    )


def list_blocks(session: Session, *, viewer: PrincipalLike, owner_handle: str, adult_age: int) -> list[str]:
    owner, cameo = load_cameo(session, handle=owner_handle)
    authorize_view(session, viewer=viewer, owner=owner, adult_age=adult_age)
    rows = session.exec(
        select(Principal.handle)
        .join(Block, Block.blocked_id == Principal.id)  # type: ignore[arg-type]
        .where(Block.cameo_id == cameo.id)
        .order_by(Principal.handle)
    ).all()
    return list(rows)


@writes
def follow(session: Session, replica: ConsentReplica, *, actor: PrincipalLike, handle: str) -> int:
    """Follow a user; two opposite follows make mutuals."""
    if actor.kind is not PrincipalKind.user:
        raise InvalidRequest("only users follow")
    target = _user(session, handle)
    if target.id == actor.id:
        raise InvalidRequest("you cannot follow yourself")
    if session.get(Follow, (actor.id, target.id)) is not None:
        return current_revision(session)  # following already: no change, so no event and no revision
    session.add(Follow(follower_id=actor.id, followee_id=target.id))
    session.flush()
    return commit_change(
        session,
        replica,
        ops=[{"op": "follow", "follower": actor.id, "followee": target.id}],
        events=[Event("follow.create", actor.id, target.id)],
    )


@writes
def unfollow(session: Session, replica: ConsentReplica, *, actor: PrincipalLike, handle: str) -> int:
    """Stop following; ends mutual status, which revokes audience-mutuals access."""
    target = get_by_handle(session, handle=handle)
    row = session.get(Follow, (actor.id, target.id))
    if row is None:
        raise NotFound(f"you do not follow @{target.handle}")
    session.delete(row)
    return commit_change(
        session,
        replica,
        ops=[{"op": "unfollow", "follower": actor.id, "followee": target.id}],
        events=[Event("follow.remove", actor.id, target.id)],
    )


def list_follows(session: Session, *, actor: PrincipalLike) -> dict[str, list[str]]:
    """Whom the actor follows, who follows them, and the mutuals."""
    following = session.exec(
        select(Principal.handle)
        .join(Follow, Follow.followee_id == Principal.id)  # type: ignore[arg-type]
        .where(Follow.follower_id == actor.id)
    ).all()
    followers = session.exec(
        select(Principal.handle)
        .join(Follow, Follow.follower_id == Principal.id)  # type: ignore[arg-type]
        .where(Follow.followee_id == actor.id)
    ).all()
    mutuals = sorted(set(following) & set(followers))
    return {"following": sorted(following), "followers": sorted(followers), "mutuals": mutuals}
