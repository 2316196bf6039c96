"""Request and response bodies. Every request model forbids unknown fields."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from consent_service.models import Audience, CameoState, PrincipalKind
from consent_service.services.grants import Purpose

Handle = Field(min_length=1, max_length=64)
# Integers from clients are compared with 64-bit database columns: a larger one is refused
# at the boundary (422), not by the database driver, which raises (a 500).
INT64_MAX = 2**63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrincipalCreate(Strict):
    kind: PrincipalKind
    handle: str = Handle
    display_name: str = Field(default="", max_length=128)
    birth_date: date | None = None


class PrincipalPublic(BaseModel):
    id: str
    kind: PrincipalKind
    handle: str
    display_name: str


class IssuedKeyPublic(BaseModel):
    principal: PrincipalPublic
    api_key: str = Field(description="Shown once; only a hash is stored.")
    key_id: str = Field(description="The key's public id (inside the token), to list or revoke it by.")


class ApiKeyPublic(BaseModel):
    key_id: str
    created_at: datetime
    revoked: bool


class GuardianCreate(Strict):
    guardian_handle: str = Handle


class CameoPublic(BaseModel):
    id: str
    owner_handle: str
    state: CameoState
    audience: Audience
    banned_terms: list[str]
    instructions: str
    updated_at: datetime


class CameoChanged(BaseModel):
    cameo: CameoPublic
    consent_revision: int


class BiometricsDestroyed(BaseModel):
    face_template: bool
    voice_template: bool
    raw_uploads: int


class CameoDeleted(CameoChanged):
    destroyed: BiometricsDestroyed
    # Compact JWS (EdDSA, typ cameo-deletion-receipt+jwt), verifiable with /.well-known/jwks.json.
    deletion_receipt: str


class CameoSettingsUpdate(Strict):
    audience: Audience | None = None
    banned_terms: list[str] | None = Field(default=None, max_length=200)
    instructions: str | None = Field(default=None, max_length=2000)


class Moderation(Strict):
    suspend: bool
    reason: str = Field(default="", max_length=500)


class GrantCreate(Strict):
    grantee_handle: str = Handle
    purposes: list[Purpose] = Field(min_length=1, max_length=8)
    expires_at: datetime | None = None


class GrantPublic(BaseModel):
    grantee_handle: str
    purposes: list[str]
    expires_at: datetime | None
    created_at: datetime


class GrantChanged(BaseModel):
    grant: GrantPublic
    consent_revision: int


class BlockCreate(Strict):
    handle: str = Handle


class Revision(BaseModel):
    consent_revision: int


class FollowsPublic(BaseModel):
    following: list[str]
    followers: list[str]
    mutuals: list[str]


class ConsentCheckRequest(Strict):
    actor_handle: str = Handle
    cameo_handles: list[str] = Field(min_length=1, max_length=64)
    purpose: Purpose = Purpose.generate
    prompt: str | None = None
    at_least_as_fresh: int | None = Field(default=None, ge=0, le=INT64_MAX)


class Restrictions(BaseModel):
    banned_terms: list[str]
    instructions: str


class CameoDecisionPublic(BaseModel):
    handle: str
    cameo_id: str | None
    allowed: bool
    reason: str
    restrictions: Restrictions


class ConsentCheckResponse(BaseModel):
    check_id: str
    allowed: bool
    decisions: list[CameoDecisionPublic]
    consent_revision: int
    receipt: str | None
    receipt_expires_at: int | None


class ReceiptStatusRequest(Strict):
    receipt: str = Field(min_length=1, max_length=8192)


class ReceiptStatusResponse(BaseModel):
    valid: bool
    status: str
    consent_revision: int
    reasons: dict[str, str]
    claims: dict[str, Any]


class AuditEventPublic(BaseModel):
    id: int
    seq: int = Field(description="Leaf index in the transparency log; use it to fetch proofs.")
    at: datetime
    actor_id: str | None
    subject_id: str | None
    action: str
    decision: str | None
    reason: str | None
    revision: int | None
    details: dict[str, Any]


class AuditPagePublic(BaseModel):
    events: list[AuditEventPublic]
    next_cursor: int | None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody


class LogKey(BaseModel):
    origin: str
    vkey: str


class CosignatureIn(Strict):
    cosignature: str = Field(min_length=1, max_length=1024)


class LogEntry(BaseModel):
    index: int
    entry: str


class LogEntries(BaseModel):
    entries: list[LogEntry]


class Proof(BaseModel):
    hashes: list[str]


class PseudonymPublic(BaseModel):
    id: str
    kind: PrincipalKind
    handle: str


class GenerationCreate(Strict):
    prompt: str = Field(max_length=100_000)
    negative_prompt: str = Field(default="", max_length=100_000)
    actor_handle: str | None = Field(default=None, max_length=64)
    num_frames: int = 9
    height: int = 64
    width: int = 64
    steps: int = 2
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)


class GenerationPublic(BaseModel):
    id: str
    status: str
    progress: int
    reason: str | None
    consent_revision: int | None
    model_id: str | None
    created_at: datetime
    updated_at: datetime


class AppearancePublic(BaseModel):
    generation_id: str
    actor_handle: str
    prompt: str
    status: str
    reason: str | None
    consented: bool
    created_at: datetime


class WebhookCreate(Strict):
    url: str = Field(min_length=8, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=4)


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="HMAC-SHA256 signing secret; shown once, stored encrypted.")


class NoticeAcceptance(Strict):
    version: str = Field(max_length=32)
