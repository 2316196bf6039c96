"""Platform webhook subscriptions: consent.revoked and consent.takedown."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from consent_service.api.deps import RuntimeDep, SessionDep, require
from consent_service.models import PrincipalRef, WebhookSubscription
from consent_service.schemas import WebhookCreate, WebhookCreated, WebhookPublic
from consent_service.services import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
Writer = Annotated[PrincipalRef, Depends(require("webhook", "write"))]
Reader = Annotated[PrincipalRef, Depends(require("webhook", "read"))]


def _public(s: WebhookSubscription) -> WebhookPublic:
    return WebhookPublic(id=s.id, url=s.url, events=list(s.events), created_at=s.created_at)


@router.post("", response_model=WebhookCreated, status_code=201)
def subscribe(
    body: WebhookCreate, session: SessionDep, runtime: RuntimeDep, caller: Writer
) -> WebhookCreated:
    """Subscribe an endpoint; deliveries carry `X-Consent-Signature: t=...,v1=HMAC-SHA256`."""
    new = webhooks.subscribe(session, caller=caller, url=body.url, events=body.events, box=runtime.box)
    return WebhookCreated(**_public(new.subscription).model_dump(), secret=new.secret)


@router.get("", response_model=list[WebhookPublic])
def list_subscriptions(session: SessionDep, caller: Reader) -> list[WebhookPublic]:
    """Your active subscriptions (secrets are never shown again)."""
    return [_public(s) for s in webhooks.list_subscriptions(session, caller=caller)]


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(subscription_id: str, session: SessionDep, caller: Writer) -> None:
    """Stop deliveries to an endpoint."""
    webhooks.unsubscribe(session, caller=caller, subscription_id=subscription_id)
