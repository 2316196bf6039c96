"""Provenance: live consent status behind a video, upload verification, and the trust anchors."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from consent_service.api.deps import RuntimeDep, SessionDep
from consent_service.errors import VideoTooLarge
from consent_service.services import provenance

router = APIRouter(prefix="/v1/provenance", tags=["provenance"])
UPLOAD_PATHS = ("/v1/provenance/verify",)


@router.get("/status/{generation_id}")
def status(generation_id: str, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Does the consent behind this video still hold? Public; reveals nothing but the status."""
    return provenance.consent_status(session, runtime.replica, generation_id=generation_id)


@router.get("/anchors", response_class=PlainTextResponse)
def anchors(runtime: RuntimeDep) -> PlainTextResponse:
    """The PEM trust anchors that validate this service's C2PA signatures."""
    return PlainTextResponse(runtime.anchors_pem.decode(), media_type="application/x-pem-file")


@router.post("/verify")
async def verify(request: Request, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Upload an MP4 (raw body): validation state, manifest summary, consent status now, audit reference."""
    cap = runtime.settings.max_video_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise VideoTooLarge(f"videos are limited to {cap} bytes")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        size = 0
        async for chunk in request.stream():  # spooled to disk: never the whole video in memory
            size += len(chunk)
            if size > cap:
                raise VideoTooLarge(f"videos are limited to {cap} bytes")
            tmp.write(chunk)
        tmp.flush()
        return await run_in_threadpool(
            provenance.verify_upload,
            session,
            runtime.replica,
            path=Path(tmp.name),
            anchors_pem=runtime.anchors_pem,
        )
