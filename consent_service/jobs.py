"""Where generation jobs run: this process (default) or Celery workers with a Redis broker."""

from __future__ import annotations

from functools import cache
from typing import Any, Protocol

from consent_service.generation_runner import GenerationRunner
from consent_service.settings import Settings
from consent_service.verification_runner import VerificationRunner

TASK_NAME = "consent.run_generation"
VERIFY_TASK_NAME = "consent.run_verification"


class JobQueue(Protocol):
    def submit(self, generation_id: str) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class CeleryJobs:
    """Sends jobs to Celery; each GPU worker process runs one job at a time (concurrency 1)."""

    def __init__(self, broker_url: str) -> None:
        self._app = celery_app(broker_url)

    def submit(self, generation_id: str) -> None:
        self._app.send_task(TASK_NAME, args=[generation_id])

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class CeleryVerifications(CeleryJobs):
    """Sends verification attempts to Celery workers, which load the biometric models once."""

    def submit(self, generation_id: str) -> None:
        self._app.send_task(VERIFY_TASK_NAME, args=[generation_id])


@cache
def celery_app(broker_url: str) -> Any:
    """The Celery application; tasks are acknowledged late so a worker crash re-delivers the job."""
    from celery import Celery

    app = Celery("consent", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_reject_on_worker_lost=True,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=TASK_NAME)
    def run_generation(generation_id: str) -> str:
        return str(_worker_runner().run(generation_id))

    @app.task(name=VERIFY_TASK_NAME)
    def run_verification(attempt_id: str) -> str:
        return str(_worker_verifications().run(attempt_id))

    return app


@cache
def _worker_verifications() -> VerificationRunner:
    from consent_service.app import build_runtime, build_verification_runner

    runtime = build_runtime(Settings())
    runtime.replica.start()
    return build_verification_runner(runtime)


@cache
def _worker_runner() -> GenerationRunner:
    """A worker process builds its own runner and consent replica once, from its environment."""
    from consent_service.app import build_runner, build_runtime

    runtime = build_runtime(Settings())
    runtime.replica.start()
    return build_runner(runtime)
