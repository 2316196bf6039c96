"""Platform webhooks for consent.revoked and consent.takedown: subscriptions and the outbox."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlmodel import Session, col, select

from consent_service.db import writes
from consent_service.errors import InvalidRequest, NotFound
from consent_service.models import PrincipalLike, WebhookSubscription
from consent_service.secretbox import SecretBox
from consent_service.services.changes import Event, write_event

EVENTS = ("consent.revoked", "consent.takedown")


@dataclass(frozen=True)
class NewSubscription:
    subscription: WebhookSubscription
    secret: str


@writes
def subscribe(
    session: Session, *, caller: PrincipalLike, url: str, events: list[str], box: SecretBox
) -> NewSubscription:
    """Register an endpoint; the signing secret is returned once and stored encrypted."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook url must be http(s) with a host")
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise InvalidRequest(
            f"events must be a non-empty subset of {list(EVENTS)}", details={"unknown": unknown}
        )
    secret = "whsec_" + secrets.token_urlsafe(32)
    sub = WebhookSubscription(
        platform_id=caller.id, url=url, events=sorted(set(events)), secret_encrypted=b""
    )
    sub.secret_encrypted = box.seal(secret.encode(), context=sub.id.encode())
    session.add(sub)
    write_event(
        session, Event("webhook.subscribe", caller.id, sub.id, details={"events": sub.events}), revision=None
    )
    session.commit()
    return NewSubscription(sub, secret)


def list_subscriptions(session: Session, *, caller: PrincipalLike) -> list[WebhookSubscription]:
    return list(
        session.exec(
            select(WebhookSubscription).where(
                WebhookSubscription.platform_id == caller.id, col(WebhookSubscription.active).is_(True)
            )
        ).all()
    )


@writes
def unsubscribe(session: Session, *, caller: PrincipalLike, subscription_id: str) -> None:
    sub = session.get(WebhookSubscription, subscription_id)
    if sub is None or sub.platform_id != caller.id or not sub.active:
        raise NotFound("no such webhook subscription")
    sub.active = False
    session.add(sub)
    write_event(session, Event("webhook.unsubscribe", caller.id, sub.id), revision=None)
    session.commit()
