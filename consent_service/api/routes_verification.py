"""Cameo verification: the biometric notice, challenges, the selfie upload, and attempt status."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from consent_service.api.deps import Runtime, RuntimeDep, SessionDep, require
from consent_service.api.limits import spooled_upload
from consent_service.models import PrincipalRef, VerificationAttempt, VerificationChallenge
from consent_service.schemas import NoticeAcceptance
from consent_service.services import verification
from consent_service.verification.media import MediaLimits, probe

router = APIRouter(prefix="/v1", tags=["verification"])
UPLOAD_PREFIX = "/v1/verification/challenges/"

Verifying = Annotated[PrincipalRef, Depends(require("verification", "create"))]
Reading = Annotated[PrincipalRef, Depends(require("verification", "read"))]


def attempt_view(attempt: VerificationAttempt) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "status": str(attempt.status),
        "stage": attempt.stage,
        "progress": attempt.progress,
        "reasons": attempt.reasons,
        "reverification": attempt.reverification,
        "metrics": attempt.metrics,
        "created_at": attempt.created_at.isoformat(),
        "finished_at": attempt.finished_at.isoformat() if attempt.finished_at else None,
        "upload_deleted": attempt.upload_deleted_at is not None,
    }


@router.get("/verification/retention")
def retention(runtime: RuntimeDep) -> dict[str, Any]:
    """The retention schedule for verification media and templates. Public."""
    return verification.retention_schedule(runtime.settings)


@router.get("/verification/notice")
def notice(runtime: RuntimeDep) -> dict[str, Any]:
    """The biometric consent notice: purpose, what is stored, retention. Public."""
    return verification.notice(runtime.settings)


@router.post("/verification/notice/acceptance", status_code=201)
def accept_notice(body: NoticeAcceptance, session: SessionDep, caller: Verifying) -> dict[str, Any]:
    consent = verification.accept_notice(session, actor=caller, version=body.version)
    return {"version": consent.notice_version, "accepted_at": consent.accepted_at.isoformat()}


@router.post("/cameos/{handle}/verification/challenges", status_code=201)
def create_challenge(
    handle: str, session: SessionDep, runtime: RuntimeDep, caller: Verifying
) -> dict[str, Any]:
    """Digits to say and turns to make, with a single-use nonce, valid for at most five minutes."""
    issued = verification.create_challenge(session, actor=caller, handle=handle, settings=runtime.settings)
    c = issued.challenge
    return {
        "id": c.id,
        "digits": c.digits,
        "turns": c.turns,
        "nonce": issued.nonce,
        "expires_at": c.expires_at.isoformat(),
        "upload": {
            "method": "POST",
            "path": f"{UPLOAD_PREFIX}{c.id}/upload",
            "headers": {
                "X-Challenge-Nonce": "<nonce>",
                "Content-Type": "video/mp4 | video/webm | video/quicktime",
            },
            "query": {"mirrored": "true when the recording is mirrored like a selfie preview"},
        },
    }


@router.post("/verification/challenges/{challenge_id}/upload", status_code=202)
async def upload(
    challenge_id: str,
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Verifying,
    nonce: Annotated[str, Header(alias="X-Challenge-Nonce", max_length=128)],
    mirrored: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    """Upload the selfie video as the raw body. It is checked before the nonce is spent,
    then verified in the background."""
    challenge = await run_in_threadpool(
        verification.check_challenge,
        session,
        actor=caller,
        challenge_id=challenge_id,
        nonce=nonce,
        settings=runtime.settings,
    )
    attempt = await _receive(request, session, runtime, caller, challenge, mirrored=mirrored)
    return attempt_view(attempt)


async def _receive(
    request: Request,
    session: Session,
    runtime: Runtime,
    caller: PrincipalRef,
    challenge: VerificationChallenge,
    *,
    mirrored: bool,
) -> VerificationAttempt:
    """Spool the body to disk under the cap, probe it, then spend the nonce and queue the job."""
    settings = runtime.settings
    limits = MediaLimits(
        max_seconds=settings.verification_max_seconds,
        min_seconds=settings.verification_min_seconds,
        max_side=settings.verification_max_side,
        min_side=settings.verification_min_side,
    )
    cap, spool = settings.verification_max_upload_bytes, settings.verification_dir / "incoming"
    async with spooled_upload(request, cap=cap, directory=spool) as path:
        await run_in_threadpool(probe, path, limits=limits)
        attempt = await run_in_threadpool(
            verification.submit_attempt,
            session,
            actor=caller,
            challenge=challenge,
            upload=path,
            mirrored=mirrored,
            settings=settings,
        )
    runtime.verifications.submit(attempt.id)
    return attempt


@router.get("/verification/attempts/{attempt_id}")
def attempt_status(attempt_id: str, session: SessionDep, caller: Reading) -> dict[str, Any]:
    """Progress while running; verified or rejected with reason codes at the end."""
    return attempt_view(verification.get_attempt(session, viewer=caller, attempt_id=attempt_id))
