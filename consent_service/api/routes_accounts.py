"""Principals, API keys and guardian links."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from consent_service.api.deps import RuntimeDep, SessionDep, require
from consent_service.api.views import principal_public
from consent_service.models import ApiKey, PrincipalRef
from consent_service.schemas import (
    ApiKeyPublic,
    GuardianCreate,
    IssuedKeyPublic,
    PrincipalCreate,
    PrincipalPublic,
)
from consent_service.services import principals

router = APIRouter(prefix="/v1", tags=["accounts"])


@router.get("/me", response_model=PrincipalPublic)
def me(caller: Annotated[PrincipalRef, Depends(require("self", "read"))]) -> PrincipalPublic:
    """Who the API key belongs to."""
    return principal_public(caller)


@router.post("/principals", response_model=IssuedKeyPublic, status_code=201)
def create_principal(
    body: PrincipalCreate,
    session: SessionDep,
    caller: Annotated[PrincipalRef, Depends(require("principal", "create"))],
) -> IssuedKeyPublic:
    """Create a user, platform, auditor or admin; its API key is shown only in this response."""
    issued = principals.create_principal(
        session,
        kind=body.kind,
        handle=body.handle,
        display_name=body.display_name,
        birth_date=body.birth_date,
        created_by=caller.id,
    )
    return _issued_public(issued)


@router.post("/principals/{handle}/keys", response_model=IssuedKeyPublic, status_code=201)
def issue_key(
    handle: str, session: SessionDep, caller: Annotated[PrincipalRef, Depends(require("principal", "create"))]
) -> IssuedKeyPublic:
    """Issue another API key for a principal."""
    issued = principals.issue_key(session, handle=handle, issued_by=caller.id)
    return _issued_public(issued)


@router.get("/principals/{handle}/keys", response_model=list[ApiKeyPublic])
def list_keys(
    handle: str, session: SessionDep, caller: Annotated[PrincipalRef, Depends(require("principal", "read"))]
) -> list[ApiKeyPublic]:
    """A principal's API keys: ids, when they were issued, and whether they are revoked."""
    return [_key_public(k) for k in principals.list_keys(session, handle=handle)]


@router.delete("/principals/{handle}/keys/{key_id}", response_model=ApiKeyPublic)
def revoke_key(
    handle: str,
    key_id: str,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("principal", "revoke"))],
) -> ApiKeyPublic:
    """Revoke an API key: refused at once by this instance, by others within their key cache's lifetime."""
    key = principals.revoke_key(session, handle=handle, key_id=key_id, revoked_by=caller.id)
    runtime.directory.forget_key(key.id)
    return _key_public(key)


def _issued_public(issued: principals.IssuedKey) -> IssuedKeyPublic:
    return IssuedKeyPublic(
        principal=principal_public(issued.principal), api_key=issued.token, key_id=issued.key_id
    )


def _key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(key_id=key.id, created_at=key.created_at, revoked=key.revoked)


@router.post("/users/{handle}/guardians", status_code=204)
def link_guardian(
    handle: str,
    body: GuardianCreate,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("guardian", "write"))],
) -> None:
    """Link an adult guardian to a minor; the guardian may then see and revoke the minor's consent."""
    principals.link_guardian(
        session,
        minor_handle=handle,
        guardian_handle=body.guardian_handle,
        linked_by=caller.id,
        adult_age=runtime.settings.adult_age_years,
    )
