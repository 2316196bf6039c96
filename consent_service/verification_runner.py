"""Runs verification jobs: in this process by default, or in Celery workers (see jobs.py).

A job claims its attempt once, runs the models off the database, then records the outcome,
seals the templates and marks the cameo verified in one transaction. The raw upload is deleted
when the job ends unless the retention setting keeps it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from consent_service.db import write_transaction
from consent_service.errors import MediaRejected
from consent_service.models import (
    Cameo,
    CameoState,
    CameoTemplate,
    Principal,
    VerificationAttempt,
    VerificationChallenge,
    VerificationStatus,
    utcnow,
)
from consent_service.replica import ConsentReplica
from consent_service.secretbox import SecretBox
from consent_service.services import verification as service
from consent_service.services.cameos import set_state
from consent_service.services.changes import Event, write_event
from consent_service.settings import Settings
from consent_service.verification.pipeline import Challenge, Enrolled, Outcome, Verifier
from consent_service.worker_thread import ThreadWorker

log = logging.getLogger(__name__)


class VerificationRunner(ThreadWorker):
    thread_name = "verification-worker"
    stop_timeout = 60.0

    def __init__(
        self,
        *,
        engine: Engine,
        replica: ConsentReplica,
        box: SecretBox,
        settings: Settings,
        verifier: Callable[[], Verifier],
    ) -> None:
        super().__init__()
        self.engine = engine
        self.replica = replica
        self.box = box
        self.settings = settings
        self._verifier_factory = verifier
        self._verifier: Verifier | None = None
        self._verifier_lock = threading.Lock()

    def verifier(self) -> Verifier:
        """Models load on the first job, not at start-up: the API serves while they load."""
        with self._verifier_lock:
            if self._verifier is None:
                self._verifier = self._verifier_factory()
            return self._verifier

    # -- one job ---------------------------------------------------------------
    def _claim(self, attempt_id: str) -> bool:
        with Session(self.engine) as session, write_transaction(session):
            claimed = session.execute(  # type: ignore[attr-defined]
                update(VerificationAttempt)
                .where(
                    col(VerificationAttempt.id) == attempt_id,
                    col(VerificationAttempt.status) == VerificationStatus.queued,
                )
                .values(status=VerificationStatus.running, stage="starting", progress=1)
            ).rowcount
            session.commit()
        return bool(claimed)

    def _progress(self, attempt_id: str) -> Callable[[str, float], None]:
        weights = {"faces": (5, 70), "voice": (70, 95)}

        def report(stage: str, fraction: float) -> None:
            lo, hi = weights.get(stage, (0, 100))
            with Session(self.engine) as session, write_transaction(session):
                session.execute(
                    update(VerificationAttempt)
                    .where(col(VerificationAttempt.id) == attempt_id)
                    .values(stage=stage, progress=int(lo + (hi - lo) * fraction))
                )
                session.commit()

        return report

    def run(self, attempt_id: str) -> VerificationStatus:
        if not self._claim(attempt_id):
            with Session(self.engine) as session:
                attempt = session.get(VerificationAttempt, attempt_id)
                return attempt.status if attempt else VerificationStatus.failed
        with Session(self.engine) as session:
            attempt = session.get(VerificationAttempt, attempt_id)
            assert attempt is not None
            challenge = session.get(VerificationChallenge, attempt.challenge_id)
            assert challenge is not None
            template = session.get(CameoTemplate, attempt.cameo_id)
            enrolled = None
            if template is not None:
                enrolled = Enrolled(
                    face=service.open_template(
                        self.box, cameo_id=attempt.cameo_id, kind="face", sealed=template.face_sealed
                    ),
                    voice=service.open_template(
                        self.box, cameo_id=attempt.cameo_id, kind="voice", sealed=template.voice_sealed
                    ),
                )
            path = Path(attempt.upload_path or "")
            ask = Challenge(digits=challenge.digits, turns=tuple(challenge.turns))
            mirrored = attempt.mirrored
        started = time.perf_counter()
        outcome: Outcome | None = None
        failure: str | None = None
        try:
            outcome = self.verifier().verify(
                path, challenge=ask, mirrored=mirrored, enrolled=enrolled, progress=self._progress(attempt_id)
            )
        except MediaRejected as exc:
            failure = exc.code
        except Exception:
            # Never log the exception's arguments: a model error could carry frame or audio data.
            log.error("verification %s failed in the models", attempt_id, exc_info=False)
            failure = "internal_error"
        return self._finish(attempt_id, outcome, failure, seconds=time.perf_counter() - started)

    def _finish(
        self, attempt_id: str, outcome: Outcome | None, failure: str | None, *, seconds: float
    ) -> VerificationStatus:
        delete_now: list[str] = []
        with Session(self.engine, expire_on_commit=False) as session, write_transaction(session):
            attempt = session.get(VerificationAttempt, attempt_id)
            assert attempt is not None
            cameo = session.get(Cameo, attempt.cameo_id)
            owner = session.get(Principal, attempt.owner_id)
            assert cameo is not None and owner is not None
            reasons = [str(r) for r in outcome.reasons] if outcome else [failure or "internal_error"]
            if outcome is not None and cameo.state in (CameoState.deleted, CameoState.suspended):
                reasons.append(f"cameo_{cameo.state}")
            passed = outcome is not None and outcome.passed and not reasons
            status = (
                VerificationStatus.verified
                if passed
                else VerificationStatus.failed
                if failure == "internal_error"
                else VerificationStatus.rejected
            )
            metrics: dict[str, Any] = dict(outcome.metrics) if outcome else {}
            metrics["seconds"] = round(seconds, 3)
            if outcome:
                metrics["stages"] = {k: round(v, 3) for k, v in outcome.stages.items()}
            now = utcnow()
            attempt.status, attempt.reasons, attempt.metrics = status, reasons, metrics
            attempt.stage, attempt.progress, attempt.finished_at = "done", 100, now
            retain = self.settings.verification_retain_uploads_seconds
            if retain == 0 or cameo.state is CameoState.deleted:
                if attempt.upload_path:
                    delete_now.append(attempt.upload_path)
                attempt.upload_deleted_at = now
            else:
                attempt.upload_delete_after = now + timedelta(seconds=retain)
            session.add(attempt)
            event = Event(
                f"verification.{status}",
                None,
                owner.id,
                decision="allow" if passed else "deny",
                reason=",".join(reasons) or None,
                details={"attempt_id": attempt.id, "reverification": attempt.reverification},
            )
            if passed:
                assert outcome is not None and outcome.face_template is not None
                assert outcome.voice_template is not None
                self._store_templates(session, cameo.id, outcome)
            write_event(session, event, revision=None)
            if passed and cameo.state is CameoState.unverified:
                set_state(
                    session, self.replica, actor_id=None, handle=owner.handle, state=CameoState.verified
                )
            else:
                session.commit()
        service.remove_files(delete_now)
        return status

    def _store_templates(self, session: Session, cameo_id: str, outcome: Outcome) -> None:
        """Enrol on first verification; a re-verification matched the enrolled templates, which stay."""
        if session.get(CameoTemplate, cameo_id) is not None:
            return
        assert outcome.face_template is not None and outcome.voice_template is not None
        verifier = self.verifier()
        session.add(
            CameoTemplate(
                cameo_id=cameo_id,
                face_model=verifier.face.name,
                face_sealed=service.seal_template(
                    self.box, cameo_id=cameo_id, kind="face", vector=outcome.face_template
                ),
                voice_model=verifier.voice.name,
                voice_sealed=service.seal_template(
                    self.box, cameo_id=cameo_id, kind="voice", vector=outcome.voice_template
                ),
            )
        )


def pending(engine: Engine, *, stale_after: timedelta = timedelta(minutes=10)) -> list[str]:
    """Attempts still queued, oldest first, to resubmit when a process starts.

    A job takes seconds, so one still `running` long after its upload died with its process: it
    ends `failed` (reason `interrupted`) rather than hang, and the owner asks for a new challenge.
    """
    with Session(engine) as session, write_transaction(session):
        session.execute(
            update(VerificationAttempt)
            .where(
                col(VerificationAttempt.status) == VerificationStatus.running,
                col(VerificationAttempt.created_at) < utcnow() - stale_after,
            )
            .values(
                status=VerificationStatus.failed, reasons=["interrupted"], stage="done", finished_at=utcnow()
            )
        )
        session.commit()
    with Session(engine) as session:
        return list(
            session.exec(
                select(VerificationAttempt.id)
                .where(VerificationAttempt.status == VerificationStatus.queued)
                .order_by(col(VerificationAttempt.created_at))
            ).all()
        )
