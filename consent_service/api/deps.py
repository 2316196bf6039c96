"""Dependencies: the database session, the caller, route-level RBAC, and shared runtime objects."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from consent_service.errors import Forbidden
from consent_service.models import Principal
from consent_service.receipts import ReceiptKeys
from consent_service.replica import ConsentReplica
from consent_service.services.principals import authenticate
from consent_service.settings import Settings
from policy.routes import RoutePolicy


@dataclass
class Runtime:
    """Objects built once at start-up and shared by every request."""

    settings: Settings
    engine: Engine
    replica: ConsentReplica
    keys: ReceiptKeys
    routes: RoutePolicy


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with Session(runtime.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return authenticate(session, token=token.strip() if scheme.lower() == "bearer" else None)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(obj: str, act: str) -> Callable[..., Principal]:
    """Route guard: the caller's role must be allowed `act` on `obj` by policy/route_policy.csv."""

    def guard(principal: CurrentPrincipal, runtime: RuntimeDep) -> Principal:
        if not runtime.routes.allows(role=str(principal.kind), obj=obj, act=act):
            raise Forbidden(f"a {principal.kind} may not {act} {obj}")
        return principal

    return guard
