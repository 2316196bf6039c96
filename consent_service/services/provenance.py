"""Provenance checks: the live consent status behind a video, and verification of uploaded videos."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from consent_service.errors import NoProvenance, NotAVideo, NotFound, UntrustedSigner, WatermarkNotFound
from consent_service.models import (
    AuditEvent,
    Generation,
    GenerationCameo,
    GenerationStatus,
    Principal,
    utcnow,
)
from consent_service.replica import ConsentReplica
from consent_service.services.checks import decide_now
from generator_adapter.signing import ProvenanceError, verify_video

MP4_BRANDS = (b"ftyp",)


def consent_status(session: Session, replica: ConsentReplica, *, generation_id: str) -> dict[str, Any]:
    """valid, revoked or taken_down, now; public, so it names nobody."""
    generation = session.get(Generation, generation_id)
    if generation is None or generation.status not in (
        GenerationStatus.released,
        GenerationStatus.taken_down,
    ):
        raise NotFound("no released video with that id")
    status = "taken_down"
    if generation.status is GenerationStatus.released:
        actor = session.get(Principal, generation.actor_id)
        owners = list(
            session.exec(
                select(GenerationCameo.owner_id).where(GenerationCameo.generation_id == generation_id)
            ).all()
        )
        assert actor is not None
        decisions = decide_now(replica, actor=actor, owner_ids=owners, purpose="generate")
        status = "valid" if all(d.allowed for d in decisions) else "revoked"
    return {
        "generation_id": generation_id,
        "status": status,
        "consent_revision": replica.policy.revision,
        "checked_at": utcnow().isoformat(),
    }


def verify_upload(
    session: Session, replica: ConsentReplica, *, path: Path, anchors_pem: bytes
) -> dict[str, Any]:
    """Validate an uploaded video's manifest; say whose consent it used and whether that still holds."""
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[4:8] not in MP4_BRANDS:
        raise NotAVideo("not an MP4 video (no ftyp box)")
    try:
        report = verify_video(path, anchors_pem=anchors_pem)
    except ProvenanceError as exc:
        raise NoProvenance(
            "the video carries no readable C2PA manifest (stripped, truncated or unsigned)"
        ) from exc
    if "signingCredential.untrusted" in report.failures or (report.state == "Valid" and not report.trusted):
        raise UntrustedSigner(
            "the manifest is signed by a certificate authority this service does not trust",
            details={"state": report.state, "failures": report.failures},
        )
    result: dict[str, Any] = {
        "validation": {"state": report.state, "failures": report.failures},
        "manifest": {k: v for k, v in asdict(report).items() if k not in ("state", "failures", "trusted")},
    }
    generation_id = report.consent.get("generation_id")
    if generation_id:
        try:
            result["consent_status"] = consent_status(session, replica, generation_id=generation_id)
        except NotFound:
            result["consent_status"] = {"generation_id": generation_id, "status": "unknown"}
        seq = session.exec(
            select(AuditEvent.seq).where(
                AuditEvent.action == "generation.release", col(AuditEvent.subject_id) == generation_id
            )
        ).first()
        result["audit"] = {"generation_id": generation_id, "release_entry": seq}
    return result


def lookup_stripped(
    session: Session, replica: ConsentReplica, *, path: Path, anchors_pem: bytes
) -> dict[str, Any]:
    """Find a video's generation from its invisible watermark when its metadata is gone."""
    from generator_adapter.watermark import NotAVideoFile, extract, sample_frames

    try:
        frames = sample_frames(path)
    except NotAVideoFile as exc:
        raise NotAVideo(f"not a readable video: {exc}") from exc
    payload = extract(frames)
    if payload is None:
        raise WatermarkNotFound("no watermark of this service could be read from the video")
    generation = session.exec(select(Generation).where(Generation.watermark == payload.hex())).first()
    if generation is None:
        raise WatermarkNotFound("the watermark matches no video released by this service")
    result: dict[str, Any] = {"watermark": payload.hex(), "generation_id": generation.id}
    try:
        result["consent_status"] = consent_status(session, replica, generation_id=generation.id)
    except NotFound:
        result["consent_status"] = {"generation_id": generation.id, "status": str(generation.status)}
    if generation.output_path and Path(generation.output_path).exists():
        report = verify_video(Path(generation.output_path), anchors_pem=anchors_pem)
        result["manifest"] = {k: v for k, v in asdict(report).items() if k not in ("failures", "trusted")}
    return result
