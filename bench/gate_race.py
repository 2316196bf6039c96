"""Revocation race harness: revoke at random moments while jobs run; count releases without consent.

Shared by tests/test_generation_race.py (CI) and bench/generation_gate.py.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from datetime import date
from typing import Any

from sqlmodel import Session, select

from consent_service.models import Audience, AuditEvent, CameoState, GenerationStatus, PrincipalKind
from consent_service.services import generations, grants
from consent_service.services.cameos import create_cameo, set_state, update_settings
from consent_service.services.principals import create_principal, get_by_handle

SMALL = generations.GenerationParams(num_frames=5, height=32, width=32, steps=2, seed=0)
CAPS = generations.GenerationCaps(
    max_prompt_chars=4000, max_frames=81, max_side=832, max_steps=50, max_cameos=8, adult_age=18
)


def setup_owner(engine: Any, replica: Any) -> None:
    with Session(engine, expire_on_commit=False) as s:
        owner = create_principal(
            s, kind=PrincipalKind.user, handle="raceowner", birth_date=date(1990, 1, 1), created_by=None
        ).principal
        create_cameo(s, replica, actor=owner)
        set_state(s, replica, actor_id=None, handle="raceowner", state=CameoState.verified)
        update_settings(s, replica, actor=owner, handle="raceowner", audience=Audience.approved, adult_age=18)


def run_trials(
    *,
    engine: Any,
    replica: Any,
    runner: Any,
    trials: int,
    max_delay: float,
    min_delay: float = 0.0,
    seed: int = 1,
    prefix: str = "racer",
) -> dict:
    """Each trial: grant, request, start the job, revoke after a random delay; check every release.

    `release_run_s` is the median time a released job took to run (None if none was released):
    what a caller sizes the delays by, so that revocations land before, during and after jobs
    on a machine of any speed.
    """
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    violations: list[str] = []
    released_runs: list[float] = []
    with Session(engine, expire_on_commit=False) as s:
        owner = get_by_handle(s, handle="raceowner")
    for i in range(trials):
        handle = f"{prefix}{i}"
        with Session(engine, expire_on_commit=False) as s:
            actor = create_principal(
                s, kind=PrincipalKind.user, handle=handle, birth_date=date(1990, 1, 1), created_by=None
            ).principal
            grants.grant_access(
                s,
                replica,
                actor=owner,
                owner_handle="raceowner",
                grantee_handle=handle,
                purposes=[grants.Purpose.generate],
                expires_at=None,
                adult_age=18,
            )
            job = generations.request_generation(
                s,
                replica,
                caller=actor,
                actor_handle=None,
                prompt="@raceowner waves",
                negative_prompt="",
                params=SMALL,
                idempotency_key=None,
                caps=CAPS,
                enqueue=lambda _: None,
                generator_configured=True,
            )
        revoked: list[int] = []

        def revoke(handle: str = handle, revoked: list[int] = revoked) -> None:
            with Session(engine, expire_on_commit=False) as s:
                revoked.append(
                    grants.revoke_access(
                        s, replica, actor=owner, owner_handle="raceowner", grantee_handle=handle, adult_age=18
                    )
                )

        timer = threading.Timer(rng.uniform(min_delay, max_delay), revoke)
        timer.start()
        status, took = timed(lambda job_id=job.id: runner.run(job_id))
        timer.join()
        outcomes[str(status)] = outcomes.get(str(status), 0) + 1
        if status is GenerationStatus.released:
            released_runs.append(took)
            with Session(engine) as s:
                released_at = s.exec(
                    select(AuditEvent.revision).where(
                        AuditEvent.action == "generation.release", AuditEvent.subject_id == job.id
                    )
                ).one()
            if released_at is None or revoked[0] <= released_at:
                violations.append(job.id)
    return {
        "trials": trials,
        "outcomes": outcomes,
        "released_without_consent": len(violations),
        "violations": violations[:10],
        "release_run_s": round(statistics.median(released_runs), 4) if released_runs else None,
    }


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
