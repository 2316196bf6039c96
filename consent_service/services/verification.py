"""Cameo verification: the biometric notice, challenges, uploads, attempt limits, templates, deletion.

The job that judges a clip lives in consent_service.verification_runner; this module holds the
rules around it. Templates are sealed with AES-GCM bound to the cameo id and never leave here
except sealed; no response or audit row carries one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlmodel import Session, col, select

from consent_service.db import writes
from consent_service.errors import (
    AttemptNotFound,
    CameoNotFound,
    ChallengeExpired,
    ChallengeNotFound,
    Forbidden,
    InvalidRequest,
    NonceMismatch,
    NonceReplayed,
    NoticeNotAccepted,
    VerificationCooldown,
)
from consent_service.models import (
    BiometricConsent,
    Cameo,
    CameoState,
    CameoTemplate,
    PrincipalKind,
    PrincipalLike,
    VerificationAttempt,
    VerificationChallenge,
    VerificationStatus,
    utcnow,
)
from consent_service.receipts import ReceiptKeys
from consent_service.secretbox import SecretBox
from consent_service.services.changes import Event, write_event
from consent_service.services.principals import get_by_handle
from consent_service.settings import Settings

NOTICE_VERSION = "2026-11-25"
DELETION_RECEIPT_TYPE = "cameo-deletion-receipt+jwt"
DIRECTIONS = ("left", "right")


def retention_schedule(settings: Settings) -> dict[str, Any]:
    """What is kept, for how long: published without authentication."""
    raw = settings.verification_retain_uploads_seconds
    return {
        "notice_version": NOTICE_VERSION,
        "raw_verification_video": (
            "deleted as soon as its verification ends"
            if raw == 0
            else f"deleted {raw} seconds after its verification ends, checked every "
            f"{settings.verification_purge_interval_seconds:g} seconds"
        ),
        "raw_verification_video_seconds": raw,
        "face_and_voice_templates": "kept, encrypted, while the cameo exists; destroyed when it is deleted",
        "challenge_seconds": settings.verification_challenge_ttl_seconds,
        "attempt_records": "reason codes and counts only, kept with the audit log; never media or templates",
        "audit_log": "append-only; records that verification happened, never biometric data",
    }


def notice(settings: Settings) -> dict[str, Any]:
    """The biometric consent notice an owner accepts before their first challenge."""
    return {
        "version": NOTICE_VERSION,
        "purpose": (
            "To confirm that a cameo belongs to the person who recorded it, and that a later "
            "re-verification is the same person, so nobody else can put your likeness into videos."
        ),
        "collected": [
            "one selfie video with audio, answering a random challenge",
            "a face template and a voice template computed from it",
        ],
        "stored": [
            "the face and voice templates, encrypted with AES-GCM",
            "the outcome and reason codes of each attempt",
        ],
        "not_stored": ["the video after verification ends, unless the retention schedule says otherwise"],
        "shared_with": "nobody; templates never appear in any response, log line or audit entry",
        "retention": retention_schedule(settings),
        "withdrawal": "deleting your cameo destroys its templates and returns a signed deletion receipt",
    }


@writes
def accept_notice(session: Session, *, actor: PrincipalLike, version: str) -> BiometricConsent:
    if actor.kind is not PrincipalKind.user:
        raise Forbidden("only users verify cameos")
    if version != NOTICE_VERSION:
        raise InvalidRequest(
            f"the current notice is version {NOTICE_VERSION}", details={"current": NOTICE_VERSION}
        )
    consent = session.get(BiometricConsent, (actor.id, version))
    if consent is None:
        consent = BiometricConsent(owner_id=actor.id, notice_version=version)
        session.add(consent)
        write_event(
            session,
            Event("verification.notice_accepted", actor.id, actor.id, details={"version": version}),
            revision=None,
        )
    session.commit()
    return consent


def _own_live_cameo(session: Session, *, actor: PrincipalLike, handle: str) -> Cameo:
    owner = get_by_handle(session, handle=handle)
    cameo = session.exec(select(Cameo).where(Cameo.owner_id == owner.id)).first()
    if cameo is None:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    if owner.id != actor.id:
        raise Forbidden("you may only verify your own cameo")
    if cameo.state is CameoState.deleted:
        raise CameoNotFound(f"@{owner.handle} has no cameo")
    if cameo.state is CameoState.suspended:
        raise Forbidden("a suspended cameo cannot be verified")
    return cameo


def check_cooldown(session: Session, *, owner_id: str, settings: Settings, now: datetime) -> None:
    """Refuse while a cooldown runs: `max_failures` rejections within one window start one."""
    window = timedelta(seconds=settings.verification_failure_window_seconds)
    cooldown = timedelta(seconds=settings.verification_cooldown_seconds)
    finished = session.exec(
        select(VerificationAttempt.finished_at).where(
            VerificationAttempt.owner_id == owner_id,
            VerificationAttempt.status == VerificationStatus.rejected,
            col(VerificationAttempt.finished_at) >= now - window - cooldown,
        )
    ).all()
    times = sorted(_aware(t) for t in finished if t is not None)
    n = settings.verification_max_failures
    until = None
    for i in range(len(times) - n + 1):
        first, last = times[i], times[i + n - 1]
        if last - first <= window:
            until = last + cooldown
    if until is not None and now < until:
        wait = int((until - now).total_seconds()) + 1
        raise VerificationCooldown(
            f"{n} failed attempts within {window.seconds} s; try again in {wait} s",
            details={"retry_after_seconds": wait},
        )


def _aware(at: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns.
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _hash_nonce(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedChallenge:
    challenge: VerificationChallenge
    nonce: str  # returned once; only its hash is stored


@writes
def create_challenge(
    session: Session, *, actor: PrincipalLike, handle: str, settings: Settings
) -> IssuedChallenge:
    """4 to 6 random digits, an alternating turn sequence, a nonce, and an expiry of at most 5 minutes."""
    cameo = _own_live_cameo(session, actor=actor, handle=handle)
    if session.get(BiometricConsent, (actor.id, NOTICE_VERSION)) is None:
        raise NoticeNotAccepted(
            "accept the biometric consent notice first", details={"notice_version": NOTICE_VERSION}
        )
    now = utcnow()
    check_cooldown(session, owner_id=actor.id, settings=settings, now=now)
    digits = "".join(secrets.choice("0123456789") for _ in range(4 + secrets.randbelow(3)))
    first = secrets.randbelow(2)
    turns = [DIRECTIONS[(first + k) % 2] for k in range(2 + secrets.randbelow(2))]
    nonce = secrets.token_urlsafe(32)
    challenge = VerificationChallenge(
        owner_id=actor.id,
        cameo_id=cameo.id,
        digits=digits,
        turns=turns,
        nonce_sha256=_hash_nonce(nonce),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.verification_challenge_ttl_seconds),
    )
    session.add(challenge)
    write_event(
        session,
        Event("verification.challenge", actor.id, actor.id, details={"challenge_id": challenge.id}),
        revision=None,
    )
    session.commit()
    return IssuedChallenge(challenge, nonce)


def check_challenge(
    session: Session, *, actor: PrincipalLike, challenge_id: str, nonce: str, settings: Settings
) -> VerificationChallenge:
    """The challenge, if this nonce was issued to this caller, is unused and unexpired."""
    challenge = session.get(VerificationChallenge, challenge_id)
    if challenge is None or challenge.owner_id != actor.id:
        raise ChallengeNotFound("no such challenge for you")
    if not hmac.compare_digest(challenge.nonce_sha256, _hash_nonce(nonce)):
        raise NonceMismatch("the nonce does not belong to this challenge")
    if challenge.used_at is not None:
        raise NonceReplayed("this challenge's nonce was already used; request a new challenge")
    now = utcnow()
    if _aware(challenge.expires_at) <= now:
        raise ChallengeExpired("the challenge expired; request a new one")
    check_cooldown(session, owner_id=actor.id, settings=settings, now=now)
    return challenge


@writes
def submit_attempt(
    session: Session,
    *,
    actor: PrincipalLike,
    challenge: VerificationChallenge,
    upload: Path,
    mirrored: bool,
    settings: Settings,
) -> VerificationAttempt:
    """Spend the nonce (exactly once, even under a race) and queue the checked upload for verification."""
    spent = session.execute(  # type: ignore[attr-defined]
        update(VerificationChallenge)
        .where(col(VerificationChallenge.id) == challenge.id, col(VerificationChallenge.used_at).is_(None))
        .values(used_at=utcnow())
    ).rowcount
    if not spent:
        session.rollback()
        raise NonceReplayed("this challenge's nonce was already used; request a new challenge")
    cameo = session.get(Cameo, challenge.cameo_id)
    if cameo is None or cameo.state in (CameoState.deleted, CameoState.suspended):
        session.rollback()
        raise CameoNotFound("the cameo for this challenge is gone or suspended")
    attempt = VerificationAttempt(
        owner_id=actor.id,
        cameo_id=challenge.cameo_id,
        challenge_id=challenge.id,
        mirrored=mirrored,
        reverification=session.get(CameoTemplate, challenge.cameo_id) is not None,
        upload_bytes=upload.stat().st_size,
    )
    dest = settings.verification_dir / f"{attempt.id}.upload"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(upload, dest)
    attempt.upload_path = str(dest)
    session.add(attempt)
    write_event(
        session,
        Event(
            "verification.submitted",
            actor.id,
            actor.id,
            details={"attempt_id": attempt.id, "challenge_id": challenge.id, "bytes": attempt.upload_bytes},
        ),
        revision=None,
    )
    try:
        session.commit()
    except Exception:
        dest.unlink(missing_ok=True)
        raise
    return attempt


def get_attempt(session: Session, *, viewer: PrincipalLike, attempt_id: str) -> VerificationAttempt:
    attempt = session.get(VerificationAttempt, attempt_id)
    if attempt is None or (attempt.owner_id != viewer.id and viewer.kind is not PrincipalKind.admin):
        raise AttemptNotFound("no such verification attempt for you")
    return attempt


# -- templates -----------------------------------------------------------------


def _context(cameo_id: str, kind: str) -> bytes:
    return f"cameo-template:{kind}:{cameo_id}".encode()


def seal_template(box: SecretBox, *, cameo_id: str, kind: str, vector: np.ndarray) -> bytes:
    return box.seal(np.asarray(vector, dtype="<f4").tobytes(), context=_context(cameo_id, kind))


def open_template(box: SecretBox, *, cameo_id: str, kind: str, sealed: bytes) -> np.ndarray:
    return np.frombuffer(box.open(sealed, context=_context(cameo_id, kind)), dtype="<f4").copy()


@writes
def reseal_templates(session: Session, *, box: SecretBox) -> int:
    """Re-encrypt every template under the current key, after a key rotation; returns how many."""
    count = 0
    for row in session.exec(select(CameoTemplate)).all():
        for kind in ("face", "voice"):
            attr = f"{kind}_sealed"
            vector = open_template(box, cameo_id=row.cameo_id, kind=kind, sealed=getattr(row, attr))
            setattr(row, attr, seal_template(box, cameo_id=row.cameo_id, kind=kind, vector=vector))
        row.updated_at = utcnow()
        session.add(row)
        count += 1
    write_event(
        session, Event("verification.templates_resealed", None, details={"count": count}), revision=None
    )
    session.commit()
    return count


@dataclass(frozen=True)
class Destroyed:
    templates: bool
    uploads: list[str]


def destroy_biometrics(session: Session, *, cameo_id: str, actor_id: str | None, owner_id: str) -> Destroyed:
    """Drop the templates and pending uploads of a cameo, in the caller's transaction.

    Upload files are listed for the caller to remove after commit, so a rollback loses nothing.
    """
    template = session.get(CameoTemplate, cameo_id)
    if template is not None:
        session.delete(template)
    attempts = session.exec(
        select(VerificationAttempt).where(
            VerificationAttempt.cameo_id == cameo_id, col(VerificationAttempt.upload_deleted_at).is_(None)
        )
    ).all()
    uploads = []
    for attempt in attempts:
        if attempt.upload_path:
            uploads.append(attempt.upload_path)
        attempt.upload_deleted_at = utcnow()
        session.add(attempt)
    write_event(
        session,
        Event(
            "cameo.biometrics_destroyed",
            actor_id,
            owner_id,
            details={"templates": template is not None, "uploads": len(uploads)},
        ),
        revision=None,
    )
    return Destroyed(templates=template is not None, uploads=uploads)


def remove_files(paths: list[str]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)


def deletion_receipt(
    keys: ReceiptKeys, *, cameo_id: str, owner_id: str, destroyed: Destroyed, issuer: str, revision: int
) -> str:
    """A signed statement that this cameo's biometric data is gone; checked against the JWKS."""
    now = utcnow()
    return keys.sign(
        {
            "iss": issuer,
            "sub": owner_id,
            "cameo_id": cameo_id,
            "iat": int(now.timestamp()),
            "deleted_at": now.isoformat(),
            "consent_revision": revision,
            "destroyed": {
                "face_template": destroyed.templates,
                "voice_template": destroyed.templates,
                "raw_uploads": len(destroyed.uploads),
            },
        },
        typ=DELETION_RECEIPT_TYPE,
    )


@writes
def purge_expired_uploads(session: Session, *, now: datetime | None = None) -> int:
    """Delete retained raw uploads whose time is up; returns how many were removed."""
    now = now or utcnow()
    due = session.exec(
        select(VerificationAttempt).where(
            col(VerificationAttempt.upload_deleted_at).is_(None),
            col(VerificationAttempt.upload_delete_after).is_not(None),
            col(VerificationAttempt.upload_delete_after) <= now,
        )
    ).all()
    paths = []
    for attempt in due:
        if attempt.upload_path:
            paths.append(attempt.upload_path)
        attempt.upload_deleted_at = now
        session.add(attempt)
    session.commit()
    remove_files(paths)
    return len(paths)
