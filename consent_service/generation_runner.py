"""Runs gated generation jobs: watch consent every step, scan, re-check, sign, release; or hold.

The same `run` serves the in-process worker (default, one job at a time) and
Celery workers on GPU machines (consent_service.jobs).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from consent_service.db import write_transaction
from consent_service.models import Cameo, Generation, GenerationCameo, GenerationStatus, Principal, utcnow
from consent_service.replica import ConsentReplica
from consent_service.services.changes import Event, current_revision, write_event
from consent_service.services.checks import decide_now
from consent_service.worker_thread import ThreadWorker
from generator_adapter.interface import (
    GenerationCancelled,
    GenerationRequest,
    LikenessScanner,
    OutputSigner,
    VideoGenerator,
)
from generator_adapter.watermark import ALG

log = logging.getLogger(__name__)


class GenerationRunner(ThreadWorker):
    """Executes one generation end to end; never serves or keeps an unconsented or unsigned output."""

    thread_name = "generation-worker"

    def __init__(
        self,
        *,
        engine: Engine,
        replica: ConsentReplica,
        generator: Callable[[], VideoGenerator] | None,
        outputs_dir: Path,
        scanner: LikenessScanner,
        signer: OutputSigner | None,
        status_url: str = "/v1/provenance/status/{generation_id}",
        visible_label: bool = True,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.replica = replica
        self._generator_factory = generator
        self._generator: VideoGenerator | None = None
        self.outputs_dir = outputs_dir
        self.scanner = scanner
        self.signer = signer
        self._status_url = status_url
        self.visible_label = visible_label

    # -- one job ---------------------------------------------------------------
    def _set(
        self, generation_id: str, *, event: Event | None = None, revision: int | None = None, **values: Any
    ) -> None:
        with Session(self.engine) as session, write_transaction(session):
            session.execute(
                update(Generation)
                .where(col(Generation.id) == generation_id)
                .values(updated_at=utcnow(), **values)
            )
            if event is not None:
                write_event(session, event, revision=revision)
            session.commit()

    def _claim(self, generation_id: str) -> bool:
        """queued -> running exactly once, even if the job is delivered twice."""
        with Session(self.engine) as session, write_transaction(session):
            claimed = session.execute(  # type: ignore[attr-defined]
                update(Generation)
                .where(col(Generation.id) == generation_id, col(Generation.status) == GenerationStatus.queued)
                .values(status=GenerationStatus.running, updated_at=utcnow())
            ).rowcount
            session.commit()
        return bool(claimed)

    def _consent_problem(self, actor: Principal, owners: list[str]) -> str | None:
        decisions = decide_now(self.replica, actor=actor, owner_ids=owners, purpose="generate")
        denied = [d.reason.value for d in decisions if not d.allowed]
        return f"consent_revoked:{denied[0]}" if denied else None

    def run(self, generation_id: str) -> GenerationStatus:
        """Run a queued job to its end state and return that state."""
        if not self._claim(generation_id):
            return GenerationStatus.cancelled
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Generation, generation_id)
            assert job is not None
            actor = session.get(Principal, job.actor_id)
            owners = list(
                session.exec(
                    select(GenerationCameo.owner_id).where(GenerationCameo.generation_id == generation_id)
                ).all()
            )
        assert actor is not None
        reason: list[str] = []

        def cancel_check() -> bool:
            with Session(self.engine) as s:
                wanted = s.exec(
                    select(Generation.cancel_requested).where(Generation.id == generation_id)
                ).one()
            if wanted:
                reason.append("requester_cancelled")
                return True
            problem = self._consent_problem(actor, owners)
            if problem:
                reason.append(problem)
                return True
            return False

        last = [-1]

        def progress(done: int, total: int) -> None:
            pct = int(100 * done / max(total, 1))
            if pct != last[0]:
                last[0] = pct
                self._set(generation_id, progress=pct)

        params = job.params
        request = GenerationRequest(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            num_frames=params["num_frames"],
            height=params["height"],
            width=params["width"],
            steps=params["steps"],
            seed=params["seed"],
        )
        if cancel_check():  # consent may have gone while the job waited in the queue
            return self._cancelled(generation_id, actor, reason[0])
        try:
            if self._generator is None:
                if self._generator_factory is None:
                    raise RuntimeError("no generator is configured")
                self._generator = self._generator_factory()
            result = self._generator.generate(request, progress=progress, should_cancel=cancel_check)
        except GenerationCancelled:
            return self._cancelled(generation_id, actor, reason[0] if reason else "cancelled")
        except Exception as exc:
            log.exception("generation %s failed", generation_id)
            self._set(
                generation_id,
                status=GenerationStatus.failed,
                reason="generator_failed",
                event=Event(
                    "generation.fail", actor.id, generation_id, details={"error": type(exc).__name__}
                ),
            )
            return GenerationStatus.failed
        return self._finish(generation_id, actor, owners, result)

    def _cancelled(self, generation_id: str, actor: Principal, reason: str) -> GenerationStatus:
        with Session(self.engine) as session:
            current = session.get(Generation, generation_id)
            if current is not None and current.status is GenerationStatus.taken_down:
                return GenerationStatus.taken_down  # the owner's takedown stands
        self._set(
            generation_id,
            status=GenerationStatus.cancelled,
            reason=reason.split(":")[0],
            event=Event("generation.cancel", actor.id, generation_id, decision="deny", reason=reason),
            revision=self.replica.policy.revision,
        )
        return GenerationStatus.cancelled

    def _finish(
        self, generation_id: str, actor: Principal, owners: list[str], result: Any
    ) -> GenerationStatus:
        from generator_adapter.video import encode_mp4

        # Output scan first, on the frames as generated: an enrolled likeness the actor has
        # no consent for blocks release.
        found = self.scanner.scan(result.frames)
        frames, watermark = self._mark(generation_id, actor, result.frames)
        held = self.outputs_dir / "held" / f"{generation_id}.mp4"
        encode_mp4(frames, held, fps=result.fps)
        unconsented = self._unconsented(actor, owners, found)
        if unconsented:
            self._set(
                generation_id,
                status=GenerationStatus.held,
                reason="unconsented_likeness",
                model_id=result.model_id,
                output_path=str(held),
                event=Event(
                    "generation.hold",
                    actor.id,
                    generation_id,
                    decision="deny",
                    reason="unconsented_likeness",
                    details={"cameos": sorted(unconsented)},
                ),
            )
            return GenerationStatus.held
        # Release, in order: a final consent check at the newest revision, then signing.
        self.replica.catch_up()
        problem = self._consent_problem(actor, owners)
        if problem:
            held.unlink(missing_ok=True)
            return self._cancelled(generation_id, actor, problem)
        if self.signer is None:
            self._set(
                generation_id,
                status=GenerationStatus.held,
                reason="unsigned",
                model_id=result.model_id,
                output_path=str(held),
                event=Event("generation.hold", actor.id, generation_id, reason="unsigned"),
                revision=self.replica.policy.revision,
            )
            return GenerationStatus.held
        # Signed where it lies, in held/, and moved on only once signed: nothing unsigned leaves held/.
        self.signer.sign_in_place(held, manifest=self._manifest(generation_id, result.model_id, watermark))
        signed = self.outputs_dir / "signing" / f"{generation_id}.mp4"
        signed.parent.mkdir(parents=True, exist_ok=True)
        held.replace(signed)
        return self._publish(generation_id, actor, owners, signed, result.model_id)

    def _mark(self, generation_id: str, actor: Principal, frames: Any) -> tuple[Any, str | None]:
        """The visible label, then the invisible watermark when the frames are large enough for it."""
        from generator_adapter import watermark

        if self.visible_label:
            from generator_adapter.label import draw_label

            frames = draw_label(frames, f"AI-generated \u00b7 @{actor.handle}")
        if not watermark.can_embed(frames):
            return frames, None
        payload = watermark.payload_for(generation_id)
        self._set(generation_id, watermark=payload.hex())
        return watermark.embed(frames, payload), payload.hex()

    def _manifest(self, generation_id: str, model_id: str, watermark: str | None = None) -> dict[str, Any]:
        """What the C2PA manifest says about consent: pseudonymous ids and where to check it now."""
        with Session(self.engine) as session:
            cameos = sorted(
                session.exec(
                    select(GenerationCameo.cameo_id).where(GenerationCameo.generation_id == generation_id)
                ).all()
            )
        return {
            "generation_id": generation_id,
            "model_id": model_id,
            "model_version": _diffusers_version(),
            "consent": {
                "generation_id": generation_id,
                "receipt_ids": [generation_id],
                "cameo_ids": cameos,
                "consent_revision": self.replica.policy.revision,
                "status_url": self._status_url.format(generation_id=generation_id),
            },
            **({"watermark": {"alg": ALG, "value": watermark}} if watermark else {}),
        }

    def _publish(
        self, generation_id: str, actor: Principal, owners: list[str], signed: Path, model_id: str
    ) -> GenerationStatus:
        """Release under the consent revision lock: no revocation can commit between the last check and
        publication, so every released video had valid consent at the revision its release records."""
        digest = _sha256(signed)
        final = self.outputs_dir / "released" / f"{generation_id}.mp4"
        final.parent.mkdir(parents=True, exist_ok=True)
        # write_transaction holds the lock every consent change takes (SQLite's write lock; the
        # revision counter's row on PostgreSQL) until the release commits.
        with Session(self.engine) as session, write_transaction(session):
            revision = current_revision(session)
            if revision > self.replica.policy.revision:
                self.replica.catch_up()
            problem = self._consent_problem(actor, owners)
            # A takedown or cancel that landed while the video was encoded or signed wins.
            still_wanted = session.execute(
                select(col(Generation.status), col(Generation.cancel_requested)).where(
                    col(Generation.id) == generation_id
                )
            ).one()
            if problem is None and tuple(still_wanted) != (GenerationStatus.running, False):
                problem = "cancelled_before_release"
            if problem is None:
                signed.replace(final)
                session.execute(
                    update(Generation)
                    .where(col(Generation.id) == generation_id)
                    .values(
                        status=GenerationStatus.released,
                        progress=100,
                        model_id=model_id,
                        output_path=str(final),
                        output_sha256=digest,
                        updated_at=utcnow(),
                    )
                )
                write_event(
                    session,
                    Event(
                        "generation.release",
                        actor.id,
                        generation_id,
                        decision="allow",
                        details={"sha256": digest},
                    ),
                    revision=revision,
                )
                session.commit()
                return GenerationStatus.released
            session.rollback()
        signed.unlink(missing_ok=True)
        return self._cancelled(generation_id, actor, problem)

    def _unconsented(self, actor: Principal, owners: list[str], found_cameos: set[str]) -> set[str]:
        if not found_cameos:
            return set()
        with Session(self.engine) as session:
            found_owners = {
                c.id: c.owner_id
                for c in session.exec(select(Cameo).where(col(Cameo.id).in_(found_cameos))).all()
            }
        bad = set()
        for cameo_id, owner_id in found_owners.items():
            if owner_id not in owners or self._consent_problem(actor, [owner_id]):
                bad.add(cameo_id)
        return bad


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return "diffusers " + version("diffusers")
    except Exception:  # metadata missing in unusual installs; the model id still identifies it
        return ""


def resumable(engine: Engine, *, stalled_after: timedelta = timedelta(minutes=10)) -> list[str]:
    """Generations to hand the in-process runner when a process starts, oldest first.

    That runner's queue lives in memory: a generation queued when its process stopped stayed
    `queued` for good, and one running then stayed `running`. Queued ones are run again; the
    claim lets one process run each, and the consent gate decides again before any GPU time.
    Every step of a running job writes its progress, so one silent for `stalled_after` died
    with its process: it ends `failed` (reason `interrupted`), audited, and the requester may
    ask again.
    """
    now = utcnow()
    with Session(engine) as session, write_transaction(session):
        stalled = session.exec(
            select(Generation).where(
                col(Generation.status) == GenerationStatus.running,
                col(Generation.updated_at) < now - stalled_after,
            )
        ).all()
        for job in stalled:
            job.status, job.reason, job.updated_at = GenerationStatus.failed, "interrupted", now
            session.add(job)
            write_event(
                session, Event("generation.fail", job.actor_id, job.id, reason="interrupted"), revision=None
            )
        session.commit()
    with Session(engine) as session:
        queued = select(Generation.id).where(Generation.status == GenerationStatus.queued)
        return list(session.exec(queued.order_by(col(Generation.created_at))).all())
