"""Reading the audit trail for auditors: filters and keyset pagination, never writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from consent_service.errors import NotFound
from consent_service.models import AuditEvent, Principal
from consent_service.services.principals import get_by_handle


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    next_cursor: int | None


def list_events(
    session: Session,
    *,
    cameo_handle: str | None = None,
    actor_handle: str | None = None,
    action: str | None = None,
    decision: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    limit: int,
) -> AuditPage:
    """Events in id order after `after`, filtered; `next_cursor` continues the listing."""
    query = select(AuditEvent)
    if cameo_handle:
        query = query.where(AuditEvent.subject_id == get_by_handle(session, handle=cameo_handle).id)
    if actor_handle:
        query = query.where(AuditEvent.actor_id == get_by_handle(session, handle=actor_handle).id)
    if action:
        query = query.where(AuditEvent.action == action)
    if decision:
        query = query.where(AuditEvent.decision == decision)
    if since:
        query = query.where(AuditEvent.at >= since)
    if until:
        query = query.where(AuditEvent.at < until)
    if after is not None:
        query = query.where(col(AuditEvent.id) > after)
    rows = list(session.exec(query.order_by(col(AuditEvent.id)).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].id if more and rows else None)


def resolve_pseudonym(session: Session, *, principal_id: str) -> dict[str, str]:
    """Map a pseudonymous principal id from the log to its handle."""
    principal = session.get(Principal, principal_id)
    if principal is None:
        raise NotFound("no principal with that id")
    return {"id": principal.id, "kind": str(principal.kind), "handle": principal.handle}
