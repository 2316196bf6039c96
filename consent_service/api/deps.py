"""Dependencies: the database session, the caller, route-level RBAC, and shared runtime objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlmodel import Session

from audit.log import TransparencyLog
from consent_service.audit_writer import AuditWriter
from consent_service.directory import Directory
from consent_service.errors import Forbidden
from consent_service.models import PrincipalRef
from consent_service.receipts import ReceiptKeys
from consent_service.replica import ConsentReplica
from consent_service.secretbox import SecretBox
from consent_service.services.checks import CheckLimits
from consent_service.settings import Settings
from consent_service.webhook_dispatcher import WebhookDispatcher
from policy.routes import RoutePolicy


@dataclass
class Runtime:
    """Objects built once at start-up and shared by every request."""

    settings: Settings
    engine: Engine
    replica: ConsentReplica
    keys: ReceiptKeys
    routes: RoutePolicy
    directory: Directory
    audit: AuditWriter
    log: TransparencyLog
    box: SecretBox
    biometric_box: SecretBox
    webhooks: WebhookDispatcher
    anchors_pem: bytes = b""  # C2PA trust anchors
    jobs: Any = None  # JobQueue, set at start-up
    verifications: Any = None  # JobQueue for verification attempts, set at start-up

    @cached_property
    def check_limits(self) -> CheckLimits:
        """The settings a consent check applies, built once: every check needs them."""
        s = self.settings
        return CheckLimits(
            max_cameos=s.max_cameos_per_check,
            max_prompt_chars=s.max_prompt_chars,
            receipt_ttl=s.receipt_ttl_seconds,
            issuer=s.receipt_issuer,
            adult_age=s.adult_age_years,
        )


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` one on
# the thread pool, and each hop costs a thread hand-off under the GIL.


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[Session]:
    # Creating a Session does no I/O; the first query happens in a threaded route.
    session = Session(runtime.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]


async def authenticate(runtime: Runtime, authorization: str) -> PrincipalRef:
    """The principal behind an `Authorization: Bearer ...` header value."""
    scheme, _, token = authorization.partition(" ")
    return await runtime.directory.authenticate(token.strip() if scheme.lower() == "bearer" else None)


def authorize(runtime: Runtime, principal: PrincipalRef, *, obj: str, act: str) -> PrincipalRef:
    """Route-level RBAC: the caller's role must be allowed `act` on `obj` by policy/route_policy.csv."""
    if not runtime.routes.allows(role=str(principal.kind), obj=obj, act=act):
        raise Forbidden(f"a {principal.kind} may not {act} {obj}")
    return principal


async def get_principal(request: Request, runtime: RuntimeDep) -> PrincipalRef:
    return await authenticate(runtime, request.headers.get("authorization", ""))


CurrentPrincipal = Annotated[PrincipalRef, Depends(get_principal)]


def require(obj: str, act: str) -> Callable[..., Awaitable[PrincipalRef]]:
    """Route guard built on `authorize`."""

    async def guard(principal: CurrentPrincipal, runtime: RuntimeDep) -> PrincipalRef:
        return authorize(runtime, principal, obj=obj, act=act)

    return guard
