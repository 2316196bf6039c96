"""The consent gate in front of the video generator: requests, cancellation, appearances, takedowns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from consent_service.db import writes
from consent_service.errors import (
    ConsentRefused,
    EmptyPrompt,
    Forbidden,
    GeneratorUnavailable,
    InvalidRequest,
    NotFound,
    NotReleased,
    OverCap,
    PromptTooLong,
    UnknownMention,
)
from consent_service.mentions import extract_mentions
from consent_service.models import (
    Generation,
    GenerationCameo,
    GenerationStatus,
    Principal,
    PrincipalKind,
    PrincipalLike,
    utcnow,
)
from consent_service.replica import ConsentReplica
from consent_service.services.cameos import authorize_view, load_cameo
from consent_service.services.changes import Event, notify_platforms, write_event
from consent_service.services.checks import CameoDecision, decide_cameos
from consent_service.services.principals import get_by_handle


@dataclass(frozen=True)
class GenerationCaps:
    max_prompt_chars: int
    max_frames: int
    max_side: int
    max_steps: int
    max_cameos: int
    adult_age: int


@dataclass(frozen=True)
class GenerationParams:
    num_frames: int
    height: int
    width: int
    steps: int
    seed: int

    def check(self, caps: GenerationCaps) -> None:
        over = {
            "num_frames": (self.num_frames, caps.max_frames),
            "height": (self.height, caps.max_side),
            "width": (self.width, caps.max_side),
            "steps": (self.steps, caps.max_steps),
        }
        for name, (value, cap) in over.items():
            if not 1 <= value <= cap:
                raise OverCap(f"{name} must be between 1 and {cap}", details={"field": name, "cap": cap})


def _actor(session: Session, caller: PrincipalLike, actor_handle: str | None) -> Principal:
    if caller.kind is PrincipalKind.user:
        if actor_handle and get_by_handle(session, handle=actor_handle).id != caller.id:
            raise Forbidden("a user generates only as themselves")
        actor = session.get(Principal, caller.id)
        assert actor is not None
        return actor
    if caller.kind is PrincipalKind.platform:
        if not actor_handle:
            raise InvalidRequest("a platform must name the actor it generates for")
        actor = get_by_handle(session, handle=actor_handle)
        if actor.kind is not PrincipalKind.user:
            raise InvalidRequest("the actor must be a user")
        return actor
    raise Forbidden("only users and platforms request generations")


def _gate(
    session: Session, replica: ConsentReplica, *, actor: Principal, prompt: str, caps: GenerationCaps
) -> tuple[list[Principal], list[CameoDecision], int]:
    handles, unresolvable = extract_mentions(prompt)
    if unresolvable:
        raise UnknownMention("mentions that are not handles", details={"mentions": unresolvable})
    if len(handles) > caps.max_cameos:
        raise OverCap(f"at most {caps.max_cameos} cameos per prompt", details={"cap": caps.max_cameos})
    owners = []
    unknown = []
    for handle in handles:
        try:
            owners.append(get_by_handle(session, handle=handle))
        except NotFound:
            unknown.append(handle)
    if unknown:
        raise UnknownMention("unknown mentions", details={"mentions": unknown})
    decisions, revision = decide_cameos(
        replica, actor=actor, owners=owners, purpose="generate", prompt=prompt
    )
    return owners, decisions, revision


@writes
def request_generation(
    session: Session,
    replica: ConsentReplica,
    *,
    caller: PrincipalLike,
    actor_handle: str | None,
    prompt: str,
    negative_prompt: str,
    params: GenerationParams,
    idempotency_key: str | None,
    caps: GenerationCaps,
    enqueue: Callable[[str], None],
    generator_configured: bool,
) -> Generation:
    """Refuse (403, per-cameo reasons) unless every mentioned cameo consents; otherwise queue the job."""
    prompt = prompt.strip()
    if not prompt:
        raise EmptyPrompt("the prompt is empty")
    if len(prompt) > caps.max_prompt_chars or len(negative_prompt) > caps.max_prompt_chars:
        raise PromptTooLong(f"prompts are limited to {caps.max_prompt_chars} characters")
    params.check(caps)
    if idempotency_key:
        existing = session.exec(
            select(Generation).where(
                Generation.requester_id == caller.id, Generation.idempotency_key == idempotency_key
            )
        ).first()
        if existing is not None:
            return existing
    actor = _actor(session, caller, actor_handle)
    owners, decisions, revision = _gate(session, replica, actor=actor, prompt=prompt, caps=caps)
    allowed = all(d.allowed for d in decisions)
    generation = Generation(
        requester_id=caller.id,
        actor_id=actor.id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        params=params.__dict__,
        idempotency_key=idempotency_key,
        consent_revision=revision,
        status=GenerationStatus.queued if allowed else GenerationStatus.refused,
        reason=None if allowed else "consent_refused",
    )
    session.add(generation)
    session.flush()
    for owner, d in zip(owners, decisions, strict=True):
        if d.cameo_id is not None:
            session.add(
                GenerationCameo(
                    generation_id=generation.id,
                    cameo_id=d.cameo_id,
                    owner_id=owner.id,
                    allowed=d.allowed,
                    reason=d.reason,
                )
            )
    write_event(
        session,
        Event(
            "generation.request" if allowed else "generation.refuse",
            actor.id,
            generation.id,
            decision="allow" if allowed else "deny",
            reason=None if allowed else "consent_refused",
            details={"requester": caller.id, "cameos": {d.cameo_id or d.handle: d.reason for d in decisions}},
        ),
        revision=revision,
    )
    if allowed and not generator_configured:
        session.rollback()
        raise GeneratorUnavailable("no video generator is configured on this service")
    session.commit()
    if allowed:
        enqueue(generation.id)
    if not allowed:
        raise ConsentRefused(
            "consent is missing for at least one cameo; nothing was generated",
            details={
                "generation_id": generation.id,
                "consent_revision": revision,
                "cameos": [{"handle": d.handle, "allowed": d.allowed, "reason": d.reason} for d in decisions],
            },
        )
    return generation


def get_generation(session: Session, *, caller: PrincipalLike, generation_id: str) -> Generation:
    """A generation, for its requester or the user it was made for."""
    generation = session.get(Generation, generation_id)
    if generation is None or caller.id not in (generation.requester_id, generation.actor_id):
        raise NotFound("no such generation")
    return generation


@writes
def cancel_generation(session: Session, *, caller: PrincipalLike, generation_id: str) -> Generation:
    """Ask the worker to stop at the next step; a queued job never starts."""
    generation = get_generation(session, caller=caller, generation_id=generation_id)
    if generation.status in (GenerationStatus.queued, GenerationStatus.running):
        generation.cancel_requested = True
        if generation.status is GenerationStatus.queued:
            generation.status, generation.reason = GenerationStatus.cancelled, "requester_cancelled"
        generation.updated_at = utcnow()
        session.add(generation)
        write_event(session, Event("generation.cancel_request", caller.id, generation.id), revision=None)
        session.commit()
    return generation


@dataclass(frozen=True)
class Appearance:
    generation_id: str
    actor_handle: str
    prompt: str
    status: str
    reason: str | None
    allowed: bool
    created_at: Any


def list_appearances(
    session: Session, *, viewer: PrincipalLike, handle: str, adult_age: int
) -> list[Appearance]:
    """Every generation that named this cameo: refused, drafts, cancelled, held and released."""
    owner, cameo = load_cameo(session, handle=handle)
    authorize_view(session, viewer=viewer, owner=owner, adult_age=adult_age)
    rows = session.exec(
        select(Generation, GenerationCameo, Principal)
        .join(GenerationCameo, col(GenerationCameo.generation_id) == col(Generation.id))
        .join(Principal, col(Principal.id) == col(Generation.actor_id))
        .where(GenerationCameo.cameo_id == cameo.id)
        .order_by(col(Generation.created_at).desc())
    ).all()
    return [
        Appearance(g.id, p.handle, g.prompt, str(g.status), g.reason, gc.allowed, g.created_at)
        for g, gc, p in rows
    ]


@writes
def take_down(session: Session, *, caller: PrincipalLike, generation_id: str) -> Generation:
    """An owner of any cameo in the video takes it down: it is never served again."""
    generation = session.get(Generation, generation_id)
    owners = (
        set(
            session.exec(
                select(GenerationCameo.owner_id).where(GenerationCameo.generation_id == generation_id)
            ).all()
        )
        if generation is not None
        else set()
    )
    if generation is None or caller.id not in owners:
        raise NotFound("no such generation among your cameo's appearances")
    if generation.status is not GenerationStatus.taken_down:
        before = str(generation.status)
        generation.status, generation.reason, generation.updated_at = (
            GenerationStatus.taken_down,
            "owner_takedown",
            utcnow(),
        )
        generation.cancel_requested = True
        session.add(generation)
        notify_platforms(
            session,
            event="consent.takedown",
            payload={"generation_id": generation.id, "cameo_owner_id": caller.id},
        )
        write_event(
            session,
            Event(
                "generation.takedown",
                caller.id,
                generation.id,
                decision="deny",
                reason="owner_takedown",
                details={"before": before},
            ),
            revision=None,
        )
        session.commit()
    return generation


def released_video(session: Session, *, caller: PrincipalLike, generation_id: str) -> str:
    """The path of a released (signed) video; anything else is refused."""
    generation = get_generation(session, caller=caller, generation_id=generation_id)
    if generation.status is not GenerationStatus.released or not generation.output_path:
        raise NotReleased(
            f"this video is {generation.status}, not released", details={"reason": generation.reason}
        )
    return generation.output_path
