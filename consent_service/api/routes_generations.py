"""The gated generator: request, follow, cancel, download; owners' appearances and takedowns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from consent_service.api.deps import RuntimeDep, SessionDep, require
from consent_service.models import Generation, PrincipalRef
from consent_service.schemas import AppearancePublic, GenerationCreate, GenerationPublic
from consent_service.services import generations

router = APIRouter(tags=["generations"])
Requester = Annotated[PrincipalRef, Depends(require("generation", "create"))]
Reader = Annotated[PrincipalRef, Depends(require("generation", "read"))]


def _public(g: Generation) -> GenerationPublic:
    return GenerationPublic(
        id=g.id,
        status=str(g.status),
        progress=g.progress,
        reason=g.reason,
        consent_revision=g.consent_revision,
        model_id=g.model_id,
        created_at=g.created_at,
        updated_at=g.updated_at,
    )


@router.post("/v1/generations", response_model=GenerationPublic, status_code=202)
def create_generation(
    body: GenerationCreate, session: SessionDep, runtime: RuntimeDep, caller: Requester
) -> GenerationPublic:
    """Queue a video whose prompt @-mentions cameos; 403 with per-cameo reasons unless all consent."""
    s = runtime.settings
    generation = generations.request_generation(
        session,
        runtime.replica,
        caller=caller,
        actor_handle=body.actor_handle,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        idempotency_key=body.idempotency_key,
        params=generations.GenerationParams(
            num_frames=body.num_frames, height=body.height, width=body.width, steps=body.steps, seed=body.seed
        ),
        caps=generations.GenerationCaps(
            max_prompt_chars=s.max_prompt_chars,
            max_frames=s.generation_max_frames,
            max_side=s.generation_max_side,
            max_steps=s.generation_max_steps,
            max_cameos=s.max_cameos_per_check,
            adult_age=s.adult_age_years,
        ),
        enqueue=runtime.jobs.submit,
        generator_configured=s.generator_model_dir is not None or s.job_backend == "celery",
    )
    return _public(generation)


@router.get("/v1/generations/{generation_id}", response_model=GenerationPublic)
def get_generation(generation_id: str, session: SessionDep, caller: Reader) -> GenerationPublic:
    """Status and progress of one of your generations."""
    return _public(generations.get_generation(session, caller=caller, generation_id=generation_id))


@router.post("/v1/generations/{generation_id}/cancel", response_model=GenerationPublic)
def cancel_generation(generation_id: str, session: SessionDep, caller: Reader) -> GenerationPublic:
    """Cancel: a queued job never starts, a running one stops after its current step."""
    return _public(generations.cancel_generation(session, caller=caller, generation_id=generation_id))


@router.get("/v1/generations/{generation_id}/video", response_class=FileResponse)
def download(generation_id: str, session: SessionDep, caller: Reader) -> FileResponse:
    """The signed video, only once released; held, unsigned or taken-down videos are never served."""
    path = generations.released_video(session, caller=caller, generation_id=generation_id)
    return FileResponse(Path(path), media_type="video/mp4", filename=f"{generation_id}.mp4")


@router.post("/v1/generations/{generation_id}/takedown", response_model=GenerationPublic)
def takedown(
    generation_id: str,
    session: SessionDep,
    caller: Annotated[PrincipalRef, Depends(require("generation", "takedown"))],
) -> GenerationPublic:
    """Take down a video your cameo appears in."""
    return _public(generations.take_down(session, caller=caller, generation_id=generation_id))


@router.get("/v1/cameos/{handle}/appearances", response_model=list[AppearancePublic])
def appearances(
    handle: str,
    session: SessionDep,
    runtime: RuntimeDep,
    caller: Annotated[PrincipalRef, Depends(require("cameo", "read"))],
) -> list[AppearancePublic]:
    """Every generation that named your cameo: refused, drafts, cancelled, held and released."""
    rows = generations.list_appearances(
        session, viewer=caller, handle=handle, adult_age=runtime.settings.adult_age_years
    )
    return [
        AppearancePublic(
            generation_id=a.generation_id,
            actor_handle=a.actor_handle,
            prompt=a.prompt,
            status=a.status,
            reason=a.reason,
            consented=a.allowed,
            created_at=a.created_at,
        )
        for a in rows
    ]
