"""Delivers the webhook outbox: HMAC-SHA256 signed POSTs, exponential backoff, every attempt audited."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from consent_service.db import write_transaction
from consent_service.models import WebhookDelivery, WebhookSubscription, utcnow
from consent_service.periodic import Periodic
from consent_service.secretbox import SecretBox
from consent_service.services.changes import Event, write_event

# Beyond the sum of the claimed attempts' timeouts: signing, recording, a slow machine.
_CLAIM_MARGIN_SECONDS = 30.0
SIGNATURE_HEADER = "X-Consent-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`; receivers reject stale times."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookDispatcher(Periodic):
    """A background sender; retries each delivery with backoff up to `max_attempts`."""

    def __init__(
        self,
        engine: Engine,
        *,
        box: SecretBox,
        interval: float = 0.5,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(name="webhook-dispatcher", interval=interval)
        self._engine = engine
        self._box = box
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._timeout = timeout

    def tick(self) -> int:
        return self.deliver_due()

    def deliver_due(self, *, limit: int = 50) -> int:
        """Attempt every delivery that is due; returns how many were attempted."""
        work = self._claim(limit)
        for delivery_id, event, payload, sub_id, url, sealed, platform in work:
            secret = self._box.open(sealed, context=sub_id.encode()).decode()
            error = self._post(url, event, delivery_id, payload, secret)
            self._record(delivery_id, platform, event, error)
        return len(work)

    def _claim(self, limit: int) -> list[tuple[str, str, dict, str, str, bytes, str]]:
        """Take due deliveries for this dispatcher alone, for as long as their attempts may take.

        Every API process runs a dispatcher (uvicorn workers, instances on one PostgreSQL):
        without a claim each of them sent every due delivery, and each attempt was counted
        and audited once per dispatcher. A claim moves the next attempt past the time this
        dispatcher needs, in the same write transaction that found the rows due, and
        writers run one at a time (write_transaction), so no other dispatcher finds them
        due meanwhile. If this process dies mid-way, the deliveries fall due again then.
        """
        with Session(self._engine) as session:
            if not session.exec(self._due(1)).first():
                return []  # the common case: nothing due, and no write lock taken to find that out
        with Session(self._engine) as session, write_transaction(session):
            due = session.exec(self._due(limit)).all()
            until = utcnow() + timedelta(seconds=self._timeout * len(due) + _CLAIM_MARGIN_SECONDS)
            work = []
            for d, s in due:
                d.next_attempt_at = until
                session.add(d)
                work.append((d.id, d.event, d.payload, s.id, s.url, s.secret_encrypted, s.platform_id))
            session.commit()
        return work

    @staticmethod
    def _due(limit: int) -> Any:
        return (
            select(WebhookDelivery, WebhookSubscription)
            .join(WebhookSubscription, col(WebhookSubscription.id) == col(WebhookDelivery.subscription_id))
            .where(WebhookDelivery.status == "pending", col(WebhookDelivery.next_attempt_at) <= utcnow())
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
        )

    def _post(self, url: str, event: str, delivery_id: str, payload: dict, secret: str) -> str | None:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        # The scheme was checked to be http(s) when the subscription was made.
        request = urllib.request.Request(  # noqa: S310
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Consent-Event": event,
                "X-Consent-Delivery": delivery_id,
                SIGNATURE_HEADER: signature(secret, int(time.time()), body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"unreachable: {exc}"[:200]

    def _record(self, delivery_id: str, platform: str, event: str, error: str | None) -> None:
        with Session(self._engine) as session, write_transaction(session):
            d = session.get(WebhookDelivery, delivery_id)
            assert d is not None
            d.attempts += 1
            if error is None:
                d.status, d.last_error = "delivered", None
            elif d.attempts >= self._max_attempts:
                d.status, d.last_error = "failed", error
            else:
                delay = self._base_delay * 2 ** (d.attempts - 1) * (1 + random.random() / 4)  # noqa: S311
                d.next_attempt_at, d.last_error = utcnow() + timedelta(seconds=delay), error
            session.add(d)
            write_event(
                session,
                Event(
                    "webhook.deliver",
                    None,
                    platform,
                    decision="ok" if error is None else "fail",
                    reason=d.status,
                    details={"delivery": delivery_id, "event": event, "attempt": d.attempts, "error": error},
                ),
                revision=None,
            )
            session.commit()
