"""Cameos, their settings, grants and blocks; follows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from consent_service.api.deps import RuntimeDep, SessionDep, require
from consent_service.api.views import cameo_changed, cameo_deleted, cameo_public, grant_public
from consent_service.models import PrincipalRef
from consent_service.schemas import (
    BlockCreate,
    CameoChanged,
    CameoDeleted,
    CameoPublic,
    CameoSettingsUpdate,
    FollowsPublic,
    GrantChanged,
    GrantCreate,
    GrantPublic,
    Moderation,
    Revision,
)
from consent_service.services import cameos, grants

router = APIRouter(prefix="/v1", tags=["cameos"])

Reader = Annotated[PrincipalRef, Depends(require("cameo", "read"))]
Writer = Annotated[PrincipalRef, Depends(require("cameo", "write"))]


@router.post("/cameos", response_model=CameoChanged, status_code=201)
def create_cameo(session: SessionDep, runtime: RuntimeDep, caller: Writer) -> CameoChanged:
    """Create your cameo: unverified and visible only to you until you change that."""
    return cameo_changed(cameos.create_cameo(session, runtime.replica, actor=caller))


@router.get("/cameos/{handle}", response_model=CameoPublic)
def get_cameo(handle: str, session: SessionDep, runtime: RuntimeDep, caller: Reader) -> CameoPublic:
    """A cameo's settings, for its owner, a minor's guardian, or an admin."""
    owner, cameo = cameos.get_cameo(
        session, viewer=caller, handle=handle, adult_age=runtime.settings.adult_age_years
    )
    return cameo_public(owner, cameo)


@router.patch("/cameos/{handle}", response_model=CameoChanged)
def update_cameo(
    handle: str, body: CameoSettingsUpdate, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> CameoChanged:
    """Change audience and content restrictions; lowering the audience revokes at once."""
    change = cameos.update_settings(
        session,
        runtime.replica,
        actor=caller,
        handle=handle,
        audience=body.audience,
        banned_terms=body.banned_terms,
        instructions=body.instructions,
        adult_age=runtime.settings.adult_age_years,
    )
    return cameo_changed(change)


@router.delete("/cameos/{handle}", response_model=CameoDeleted)
def delete_cameo(handle: str, session: SessionDep, runtime: RuntimeDep, caller: Writer) -> CameoDeleted:
    """Delete your cameo: checks deny, grants drop, templates are destroyed; returns a signed receipt."""
    change = cameos.delete_cameo(
        session, runtime.replica, actor=caller, handle=handle, adult_age=runtime.settings.adult_age_years
    )
    return cameo_deleted(change, keys=runtime.keys, issuer=runtime.settings.receipt_issuer)


@router.post("/cameos/{handle}/moderation", response_model=CameoChanged)
def moderate_cameo(
    handle: str,
    body: Moderation,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("cameo", "moderate"))],
) -> CameoChanged:
    """Suspend or reinstate a cameo (admins)."""
    change = cameos.moderate(
        session, runtime.replica, actor=caller, handle=handle, suspend=body.suspend, reason=body.reason
    )
    return cameo_changed(change)


@router.get("/cameos/{handle}/grants", response_model=list[GrantPublic])
def list_grants(handle: str, session: SessionDep, runtime: RuntimeDep, caller: Reader) -> list[GrantPublic]:
    """People approved to use this cameo."""
    views = grants.list_grants(
        session, viewer=caller, owner_handle=handle, adult_age=runtime.settings.adult_age_years
    )
    return [grant_public(v) for v in views]


@router.post("/cameos/{handle}/grants", response_model=GrantChanged, status_code=201)
def create_grant(
    handle: str, body: GrantCreate, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> GrantChanged:
    """Approve a person for some purposes, optionally until a time."""
    view, revision = grants.grant_access(
        session,
        runtime.replica,
        actor=caller,
        owner_handle=handle,
        grantee_handle=body.grantee_handle,
        purposes=body.purposes,
        expires_at=body.expires_at,
        adult_age=runtime.settings.adult_age_years,
    )
    return GrantChanged(grant=grant_public(view), consent_revision=revision)


@router.delete("/cameos/{handle}/grants/{grantee}", response_model=Revision)
def revoke_grant(
    handle: str, grantee: str, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> Revision:
    """Revoke a person's grant; effective for the very next check."""
    revision = grants.revoke_access(
        session,
        runtime.replica,
        actor=caller,
        owner_handle=handle,
        grantee_handle=grantee,
        adult_age=runtime.settings.adult_age_years,
    )
    return Revision(consent_revision=revision)


@router.get("/cameos/{handle}/blocks", response_model=list[str])
def list_blocks(handle: str, session: SessionDep, runtime: RuntimeDep, caller: Reader) -> list[str]:
    """Handles blocked from this cameo."""
    return grants.list_blocks(
        session, viewer=caller, owner_handle=handle, adult_age=runtime.settings.adult_age_years
    )


@router.post("/cameos/{handle}/blocks", response_model=Revision, status_code=201)
def create_block(
    handle: str, body: BlockCreate, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> Revision:
    """Block a person whatever the audience or grants say."""
    revision = grants.block(
        session,
        runtime.replica,
        actor=caller,
        owner_handle=handle,
        blocked_handle=body.handle,
        adult_age=runtime.settings.adult_age_years,
    )
    return Revision(consent_revision=revision)


@router.delete("/cameos/{handle}/blocks/{blocked}", response_model=Revision)
def remove_block(
    handle: str, blocked: str, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> Revision:
    """Lift a block."""
    revision = grants.unblock(
        session,
        runtime.replica,
        actor=caller,
        owner_handle=handle,
        blocked_handle=blocked,
        adult_age=runtime.settings.adult_age_years,
    )
    return Revision(consent_revision=revision)


@router.get("/follows", response_model=FollowsPublic)
def list_follows(
    session: SessionDep, caller: Annotated[PrincipalRef, Depends(require("follow", "read"))]
) -> FollowsPublic:
    """Whom you follow, your followers, and your mutuals."""
    return FollowsPublic(**grants.list_follows(session, actor=caller))


@router.put("/follows/{handle}", response_model=Revision)
def follow(
    handle: str,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("follow", "write"))],
) -> Revision:
    """Follow a user."""
    return Revision(consent_revision=grants.follow(session, runtime.replica, actor=caller, handle=handle))


@router.delete("/follows/{handle}", response_model=Revision)
def unfollow(
    handle: str,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("follow", "write"))],
) -> Revision:
    """Stop following a user."""
    return Revision(consent_revision=grants.unfollow(session, runtime.replica, actor=caller, handle=handle))
