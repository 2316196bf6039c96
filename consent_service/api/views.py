"""Conversions from domain objects to response bodies, shared by the route modules."""

from __future__ import annotations

from consent_service.models import Cameo, Principal, PrincipalLike, PrincipalRef
from consent_service.receipts import ReceiptKeys
from consent_service.schemas import (
    BiometricsDestroyed,
    CameoChanged,
    CameoDeleted,
    CameoPublic,
    GrantPublic,
    PrincipalPublic,
)
from consent_service.services import verification
from consent_service.services.cameos import CameoChange
from consent_service.services.grants import GrantView


def principal_public(p: Principal | PrincipalRef) -> PrincipalPublic:
    return PrincipalPublic(id=p.id, kind=p.kind, handle=p.handle, display_name=p.display_name)


def cameo_public(owner: PrincipalLike, cameo: Cameo) -> CameoPublic:
    return CameoPublic(
        id=cameo.id,
        owner_handle=owner.handle,
        state=cameo.state,
        audience=cameo.audience,
        banned_terms=list(cameo.banned_terms),
        instructions=cameo.instructions,
        updated_at=cameo.updated_at,
    )


def cameo_changed(change: CameoChange) -> CameoChanged:
    return CameoChanged(cameo=cameo_public(change.owner, change.cameo), consent_revision=change.revision)


def cameo_deleted(change: CameoChange, *, keys: ReceiptKeys, issuer: str) -> CameoDeleted:
    """The deleted cameo, what was destroyed, and a signed deletion receipt saying so."""
    assert change.destroyed is not None
    receipt = verification.deletion_receipt(
        keys,
        cameo_id=change.cameo.id,
        owner_id=change.owner.id,
        destroyed=change.destroyed,
        issuer=issuer,
        revision=change.revision,
    )
    templates = change.destroyed.templates
    return CameoDeleted(
        cameo=cameo_public(change.owner, change.cameo),
        consent_revision=change.revision,
        destroyed=BiometricsDestroyed(
            face_template=templates, voice_template=templates, raw_uploads=len(change.destroyed.uploads)
        ),
        deletion_receipt=receipt,
    )


def grant_public(g: GrantView) -> GrantPublic:
    return GrantPublic(
        grantee_handle=g.grantee_handle, purposes=g.purposes, expires_at=g.expires_at, created_at=g.created_at
    )
