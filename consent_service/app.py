"""The FastAPI application factory."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from sqlalchemy import Engine

from audit.log import TransparencyLog
from audit.notes import NoteSigner, WitnessKey
from consent_service.api import errors
from consent_service.api.deps import Runtime
from consent_service.api.errors import ERROR_RESPONSES
from consent_service.api.hot_path import ConsentCheckHotPath, ConsentServiceApp
from consent_service.api.limits import BodyLimit
from consent_service.api.routes_accounts import router as accounts_router
from consent_service.api.routes_cameos import router as cameos_router
from consent_service.api.routes_consent import router as consent_router
from consent_service.api.routes_generations import router as generations_router
from consent_service.api.routes_log import router as log_router
from consent_service.api.routes_provenance import UPLOAD_PATHS
from consent_service.api.routes_provenance import router as provenance_router
from consent_service.api.routes_verification import UPLOAD_PREFIX
from consent_service.api.routes_verification import router as verification_router
from consent_service.api.routes_webhooks import router as webhooks_router
from consent_service.audit_writer import AuditWriter
from consent_service.db import WalCheckpointer, hold_here, make_engine
from consent_service.directory import Directory
from consent_service.generation_runner import GenerationRunner, resumable
from consent_service.housekeeping import HousekeeperProcess, UploadPurger
from consent_service.jobs import CeleryJobs, CeleryVerifications, JobQueue
from consent_service.receipts import ReceiptKeys, load_or_create_key
from consent_service.replica import ConsentReplica
from consent_service.secretbox import SecretBox
from consent_service.secretbox import load_or_create_key as load_secret_key
from consent_service.settings import Settings
from consent_service.verification_runner import VerificationRunner, pending
from consent_service.webhook_dispatcher import WebhookDispatcher
from generator_adapter.interface import NoEnrolledTemplates
from generator_adapter.signing import C2paSigner, SigningIdentity, load_callback
from policy.likeness import LikenessPolicy
from policy.routes import RoutePolicy

if TYPE_CHECKING:
    from consent_service.verification.pipeline import Verifier
    from generator_adapter.diffusers_backend import DiffusersGenerator

log = logging.getLogger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    """Connect, load the consent replica and the receipt keys; the expensive part of start-up."""
    engine = make_engine(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
    replica = ConsentReplica(
        engine=engine,
        policy=LikenessPolicy(adult_age=settings.adult_age_years),
        poll_interval=settings.sync_interval_seconds,
        huge_pages_min_rules=settings.replica_huge_pages_min_rules,
    )
    replica.load()
    signing = load_or_create_key(
        settings.resolved_receipt_key_path, create=settings.environment != "production"
    )
    previous = tuple(
        load_or_create_key(p, create=False).public_key() for p in settings.receipt_previous_key_paths
    )
    create = settings.environment != "production"
    box = SecretBox(
        current=load_secret_key(settings.resolved_secrets_key_path, create=create),
        previous=tuple(load_secret_key(p, create=False) for p in settings.secrets_previous_key_paths),
    )
    biometric_box = SecretBox(
        current=load_secret_key(settings.resolved_biometric_key_path, create=create),
        previous=tuple(load_secret_key(p, create=False) for p in settings.biometric_previous_key_paths),
    )
    keys = ReceiptKeys(signing=signing, previous=previous)
    return Runtime(
        biometric_box=biometric_box,
        settings=settings,
        engine=engine,
        replica=replica,
        keys=keys,
        routes=RoutePolicy(),
        directory=Directory(engine, key_ttl=settings.api_key_cache_seconds),
        audit=AuditWriter(
            engine,
            keys=keys,
            offload=None if settings.audit_writer == "loop" else settings.audit_writer,
            max_pending=settings.audit_max_pending,
        ),
        log=build_log(settings, engine),
        box=box,
        webhooks=WebhookDispatcher(engine, box=box),
    )


def build_runner(runtime: Runtime) -> GenerationRunner:
    """The generation runner: the configured diffusers pipeline, the likeness scan, and C2PA signing."""
    settings = runtime.settings
    factory = None
    if settings.generator_model_dir is not None:
        model_dir, device, dtype = (
            settings.generator_model_dir,
            settings.generator_device,
            settings.generator_dtype,
        )

        def factory() -> DiffusersGenerator:
            from generator_adapter.diffusers_backend import DiffusersGenerator

            return DiffusersGenerator(model_dir, device=device, dtype=dtype)

    return GenerationRunner(
        engine=runtime.engine,
        replica=runtime.replica,
        generator=factory,
        outputs_dir=settings.outputs_dir,
        scanner=NoEnrolledTemplates(),
        signer=build_signer(settings),
        status_url=f"{settings.public_base_url.rstrip('/')}/v1/provenance/status/{{generation_id}}",
        visible_label=settings.visible_label,
    )


def build_verification_runner(runtime: Runtime) -> VerificationRunner:
    """The verification job runner with the configured models, loaded on its first job."""
    settings = runtime.settings

    def verifier() -> Verifier:
        from consent_service.verification.loaders import build_verifier

        return build_verifier(settings)

    return VerificationRunner(
        engine=runtime.engine,
        replica=runtime.replica,
        box=runtime.biometric_box,
        settings=settings,
        verifier=verifier,
    )


def build_verifications(runtime: Runtime) -> JobQueue:
    if runtime.settings.job_backend == "celery":
        return CeleryVerifications(runtime.settings.celery_broker_url)
    return build_verification_runner(runtime)


def signing_identity(settings: Settings) -> SigningIdentity:
    """Configured certificate chain and key, or (outside production) a local CA made on first use."""
    paths = (settings.c2pa_chain_path, settings.c2pa_key_path, settings.c2pa_anchors_path)
    if settings.c2pa_sign_callback:
        if settings.c2pa_chain_path is None or settings.c2pa_anchors_path is None:
            raise ValueError(
                "a C2PA sign callback needs CONSENT_C2PA_CHAIN_PATH and CONSENT_C2PA_ANCHORS_PATH"
            )
        return SigningIdentity.remote(
            chain=settings.c2pa_chain_path,
            anchors=settings.c2pa_anchors_path,
            sign=load_callback(settings.c2pa_sign_callback),
        )
    if all(paths):
        return SigningIdentity.from_files(chain=paths[0], key=paths[1], anchors=paths[2])  # type: ignore[arg-type]
    if settings.environment == "production":
        raise ValueError("set CONSENT_C2PA_CHAIN_PATH, CONSENT_C2PA_KEY_PATH and CONSENT_C2PA_ANCHORS_PATH")
    return SigningIdentity.local(settings.data_dir / "c2pa")


def build_signer(settings: Settings) -> C2paSigner:
    """The C2PA signer every released video goes through."""
    return C2paSigner(
        signing_identity(settings),
        claim_generator="cameo-consent/0.1.0",
        tsa_url=settings.c2pa_tsa_url,
        tsa_timeout=settings.c2pa_tsa_timeout_seconds,
    )


def build_jobs(runtime: Runtime) -> JobQueue:
    """In-process worker by default; Celery when configured."""
    if runtime.settings.job_backend == "celery":
        return CeleryJobs(runtime.settings.celery_broker_url)
    return build_runner(runtime)


def build_log(settings: Settings, engine: Engine) -> TransparencyLog:
    """The transparency log over this database, with its checkpoint key and known witnesses."""
    key = load_or_create_key(settings.resolved_log_key_path, create=settings.environment != "production")
    witnesses = tuple(WitnessKey.parse(v) for v in settings.log_witness_keys)
    return TransparencyLog(engine, signer=NoteSigner(name=settings.log_origin, key=key), witnesses=witnesses)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing connects until start-up; settings are read here, not at import."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
        runtime = build_runtime(settings)
        runtime.replica.start()
        runtime.anchors_pem = signing_identity(settings).anchors_pem
        runtime.jobs = build_jobs(runtime)
        runtime.jobs.start()
        if settings.job_backend == "inprocess":  # Celery's broker keeps its own queue
            for generation_id in resumable(runtime.engine):
                runtime.jobs.submit(generation_id)
        runtime.verifications = build_verifications(runtime)
        runtime.verifications.start()
        for attempt_id in pending(runtime.engine):
            runtime.verifications.submit(attempt_id)
        runtime.audit.start()
        runtime.webhooks.start()
        upkeep: HousekeeperProcess | WalCheckpointer
        purger: UploadPurger | None = None  # in the housekeeper process, unless upkeep runs here
        if settings.housekeeping == "process":
            upkeep = HousekeeperProcess(settings)  # integrates the log and checkpoints SQLite
        else:
            runtime.log.start(interval=settings.log_integrate_interval_seconds)
            upkeep = WalCheckpointer(runtime.engine)
            purger = UploadPurger(
                runtime.engine, interval=settings.verification_purge_interval_seconds, foreground=hold_here
            )
            purger.start()
        upkeep.start()
        app.state.runtime = runtime
        log.info("consent service ready at revision %s", runtime.replica.policy.revision)
        try:
            yield
        finally:
            runtime.jobs.stop()
            runtime.verifications.stop()
            runtime.webhooks.stop()
            upkeep.stop()
            if purger is not None:
                purger.stop()
            runtime.log.close()
            runtime.audit.stop()
            runtime.replica.stop()
            runtime.engine.dispose()

    app = ConsentServiceApp(
        title="Cameo consent service",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry asks the global providers on every request whether
        # to record it: about 2.5% of the event loop's CPU per consent check, with none configured.
        telemetry=None if settings.otel_telemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    # Routes match in order: the platforms' hot path goes first.
    for router in (
        consent_router,
        accounts_router,
        cameos_router,
        log_router,
        generations_router,
        webhooks_router,
        provenance_router,
        verification_router,
    ):
        app.include_router(router, responses=ERROR_RESPONSES)
    if settings.check_hot_path:
        app.hot_path = ConsentCheckHotPath(app, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        streamed=UPLOAD_PATHS,
        streamed_prefixes=(UPLOAD_PREFIX,),
    )
    return app
