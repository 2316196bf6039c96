"""SQLModel tables. Models validate and hold data; rules live in services."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False, **kw))


class PrincipalKind(StrEnum):
    user = "user"
    platform = "platform"
    auditor = "auditor"
    admin = "admin"


class CameoState(StrEnum):
    unverified = "unverified"
    verified = "verified"
    suspended = "suspended"
    deleted = "deleted"


class Audience(StrEnum):
    only_me = "only_me"
    approved = "approved"
    mutuals = "mutuals"
    everyone = "everyone"


# Ordered from most to least restrictive; a guardian may only move left.
AUDIENCE_ORDER = [Audience.only_me, Audience.approved, Audience.mutuals, Audience.everyone]


class Principal(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    kind: PrincipalKind = Field(index=True)
    handle: str = Field(unique=True, index=True, max_length=64)
    display_name: str = Field(default="", max_length=128)
    birth_date: date | None = None
    disabled: bool = False
    created_at: datetime = _ts()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    # The public key id is embedded in the token; only a hash of the secret is stored.
    id: str = Field(primary_key=True, max_length=32)
    principal_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    secret_hash: str = Field(max_length=128)
    created_at: datetime = _ts()
    revoked: bool = False


class GuardianLink(SQLModel, table=True):
    __tablename__ = "guardian_link"

    minor_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    guardian_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    created_at: datetime = _ts()


class Cameo(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="principal.id", unique=True, max_length=32)
    state: CameoState = CameoState.unverified
    audience: Audience = Audience.only_me
    banned_terms: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    instructions: str = Field(default="", max_length=2000)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class LikenessGrant(SQLModel, table=True):
    __tablename__ = "likeness_grant"
    __table_args__ = (UniqueConstraint("cameo_id", "grantee_id"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    cameo_id: str = Field(foreign_key="cameo.id", max_length=32)
    grantee_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    purposes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    created_at: datetime = _ts()


class Block(SQLModel, table=True):
    __tablename__ = "cameo_block"

    cameo_id: str = Field(foreign_key="cameo.id", primary_key=True, max_length=32)
    blocked_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    created_at: datetime = _ts()


class Follow(SQLModel, table=True):
    follower_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    followee_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    created_at: datetime = _ts()


class RevisionCounter(SQLModel, table=True):
    """A single row; bumping it under a row lock orders all consent changes."""

    __tablename__ = "revision_counter"

    id: int = Field(default=1, primary_key=True)
    value: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class ConsentChange(SQLModel, table=True):
    """What changed at each revision; every instance replays these in order."""

    __tablename__ = "consent_change"

    revision: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    ops: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts()


class AuditEvent(SQLModel, table=True):
    """Append-only: there is no update or delete function for these rows anywhere."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_subject_at", "subject_id", "at"),
        Index("ix_audit_actor_at", "actor_id", "at"),
        UniqueConstraint("seq", name="uq_audit_event_seq"),
    )

    # SQLite only autoincrements an INTEGER primary key, hence the variant.
    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    at: datetime = _ts(index=True)
    actor_id: str | None = Field(default=None, max_length=32)
    subject_id: str | None = Field(default=None, max_length=32)
    action: str = Field(index=True, max_length=64)
    decision: str | None = Field(default=None, max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    revision: int | None = Field(default=None, sa_column=Column(BigInteger))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Leaf index in the Merkle log, dense and in commit order, and the exact
    # bytes that were hashed into that leaf (canonical JSON of the fields above).
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    entry: str = Field(sa_column=Column(Text, nullable=False))


class PrincipalLike(Protocol):
    """What services need to know about a caller or a person; met by Principal and PrincipalRef."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> PrincipalKind: ...
    @property
    def handle(self) -> str: ...
    @property
    def birth_date(self) -> date | None: ...


@dataclass(frozen=True, slots=True)
class PrincipalRef:
    """An immutable snapshot of a principal, safe to cache and share between threads."""

    id: str
    kind: PrincipalKind
    handle: str
    birth_date: date | None
    display_name: str = ""

    @classmethod
    def of(cls, p: Principal) -> PrincipalRef:
        # Interned, as the consent replica interns the ids in its rules and maps: a decision's
        # lookups and matcher comparisons then meet the same string object, not an equal one
        # to be compared byte by byte (policy/likeness.py).
        return cls(
            id=sys.intern(p.id),
            kind=p.kind,
            handle=p.handle,
            birth_date=p.birth_date,
            display_name=p.display_name,
        )


class AuditJournalProgress(SQLModel, table=True):
    """How far each SQLite audit journal file has been ingested (consent_service/audit_journal.py).

    Moved on in the transaction that inserts the rows, so a row is ingested exactly once
    whichever ingester, and however many, got there first.
    """

    __tablename__ = "audit_journal"

    name: str = Field(primary_key=True, max_length=128)
    consumed: int = Field(sa_column=Column(BigInteger, nullable=False))


class LogCounter(SQLModel, table=True):
    """Next audit sequence number; reserved under a row lock in the writing transaction."""

    __tablename__ = "log_counter"

    id: int = Field(default=1, primary_key=True)
    next: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class LogNode(SQLModel, table=True):
    """Every complete (perfect) subtree hash of the Merkle tree: level 0 are leaf hashes."""

    __tablename__ = "log_node"

    level: int = Field(primary_key=True)
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class LogCheckpoint(SQLModel, table=True):
    """Signed checkpoints; one per tree size, so two different roots for one size cannot be stored."""

    __tablename__ = "log_checkpoint"

    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts()


class LogCosignature(SQLModel, table=True):
    """A witness's cosignature line on a checkpoint (C2SP tlog-cosignature)."""

    __tablename__ = "log_cosignature"

    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    witness: str = Field(primary_key=True, max_length=256)
    line: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts()


class GenerationStatus(StrEnum):
    queued = "queued"
    running = "running"
    refused = "refused"
    cancelled = "cancelled"
    failed = "failed"
    held = "held"
    released = "released"
    taken_down = "taken_down"


class Generation(SQLModel, table=True):
    """One request to the gated generator, from refusal or queueing to release or takedown."""

    __table_args__ = (UniqueConstraint("requester_id", "idempotency_key", name="uq_generation_idempotency"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    requester_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    actor_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    prompt: str = Field(sa_column=Column(Text, nullable=False))
    negative_prompt: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: GenerationStatus = Field(default=GenerationStatus.queued, index=True)
    progress: int = 0
    reason: str | None = Field(default=None, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=128)
    consent_revision: int | None = Field(default=None, sa_column=Column(BigInteger))
    cancel_requested: bool = False
    model_id: str | None = Field(default=None, max_length=256)
    output_path: str | None = Field(default=None, max_length=1024)
    output_sha256: str | None = Field(default=None, max_length=64)
    # Hex of the invisible watermark payload, to find a video whose metadata was stripped.
    watermark: str | None = Field(default=None, index=True, max_length=16)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class GenerationCameo(SQLModel, table=True):
    """Which cameos a generation named, and the decision for each: the owners' view of appearances."""

    __tablename__ = "generation_cameo"

    generation_id: str = Field(foreign_key="generation.id", primary_key=True, max_length=32)
    cameo_id: str = Field(foreign_key="cameo.id", primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    allowed: bool
    reason: str = Field(max_length=64)


class WebhookSubscription(SQLModel, table=True):
    """A platform's endpoint for consent.revoked and consent.takedown; the HMAC secret is stored encrypted."""

    __tablename__ = "webhook_subscription"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    platform_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    url: str = Field(max_length=2048)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret_encrypted: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    active: bool = True
    created_at: datetime = _ts()


class WebhookDelivery(SQLModel, table=True):
    """An outbox row written in the transaction of the event it announces, then delivered with retries."""

    __tablename__ = "webhook_delivery"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    subscription_id: str = Field(foreign_key="webhook_subscription.id", index=True, max_length=32)
    event: str = Field(max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", index=True, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts(index=True)
    last_error: str | None = Field(default=None, max_length=512)
    created_at: datetime = _ts()


class BiometricConsent(SQLModel, table=True):
    """An owner's acceptance of one version of the biometric consent notice."""

    __tablename__ = "biometric_consent"

    owner_id: str = Field(foreign_key="principal.id", primary_key=True, max_length=32)
    notice_version: str = Field(primary_key=True, max_length=32)
    accepted_at: datetime = _ts()


class VerificationChallenge(SQLModel, table=True):
    """Digits to speak and turns to make, with a single-use nonce (only its hash is stored)."""

    __tablename__ = "verification_challenge"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    cameo_id: str = Field(foreign_key="cameo.id", index=True, max_length=32)
    digits: str = Field(max_length=8)
    turns: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    nonce_sha256: str = Field(max_length=64)
    created_at: datetime = _ts()
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class VerificationStatus(StrEnum):
    queued = "queued"
    running = "running"
    verified = "verified"
    rejected = "rejected"
    failed = "failed"


class VerificationAttempt(SQLModel, table=True):
    """One uploaded clip and what its verification job made of it (reason codes, never templates)."""

    __tablename__ = "verification_attempt"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="principal.id", index=True, max_length=32)
    cameo_id: str = Field(foreign_key="cameo.id", index=True, max_length=32)
    challenge_id: str = Field(foreign_key="verification_challenge.id", unique=True, max_length=32)
    status: VerificationStatus = Field(default=VerificationStatus.queued, index=True)
    stage: str = Field(default="queued", max_length=32)
    progress: int = 0
    mirrored: bool = False
    reverification: bool = False
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    upload_path: str | None = Field(default=None, max_length=1024)
    upload_bytes: int = 0
    upload_delete_after: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    upload_deleted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = _ts(index=True)
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class CameoTemplate(SQLModel, table=True):
    """A verified cameo's face and voice templates, each sealed with AES-GCM bound to the cameo id."""

    __tablename__ = "cameo_template"

    cameo_id: str = Field(foreign_key="cameo.id", primary_key=True, max_length=32)
    face_model: str = Field(max_length=128)
    face_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    voice_model: str = Field(max_length=128)
    voice_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
