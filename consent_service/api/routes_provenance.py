"""Provenance: live consent status behind a video, upload verification, and the trust anchors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from consent_service.api.deps import RuntimeDep, SessionDep
from consent_service.api.limits import spooled_upload
from consent_service.services import provenance

router = APIRouter(prefix="/v1/provenance", tags=["provenance"])
UPLOAD_PATHS = ("/v1/provenance/verify", "/v1/provenance/lookup")


@router.get("/status/{generation_id}")
def status(generation_id: str, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Does the consent behind this video still hold? Public; reveals nothing but the status."""
    return provenance.consent_status(session, runtime.replica, generation_id=generation_id)


@router.get("/anchors", response_class=PlainTextResponse)
def anchors(runtime: RuntimeDep) -> PlainTextResponse:
    """The PEM trust anchors that validate this service's C2PA signatures."""
    return PlainTextResponse(runtime.anchors_pem.decode(), media_type="application/x-pem-file")


async def _spooled(request: Request, cap: int, work: Callable[[Path], Any]) -> Any:
    """Spool an upload to disk under a size cap, then run `work` on the file."""
    async with spooled_upload(request, cap=cap) as path:
        return await run_in_threadpool(work, path)


@router.post("/verify")
async def verify(request: Request, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Upload an MP4 (raw body): validation state, manifest summary, consent status now, audit reference."""

    def work(path: Path) -> Any:
        return provenance.verify_upload(session, runtime.replica, path=path, anchors_pem=runtime.anchors_pem)

    return await _spooled(request, runtime.settings.max_video_bytes, work)


@router.post("/lookup")
async def lookup(request: Request, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Upload a video whose metadata was stripped: its watermark leads to the manifest and consent status."""

    def work(path: Path) -> Any:
        return provenance.lookup_stripped(
            session, runtime.replica, path=path, anchors_pem=runtime.anchors_pem
        )

    return await _spooled(request, runtime.settings.max_video_bytes, work)
