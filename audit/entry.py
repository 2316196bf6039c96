"""The canonical byte form of an audit entry: what the log hashes, exports and verifies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def canonical_time(at: datetime) -> str:
    """UTC, microseconds, 'Z': identical on every database backend (SQLite returns naive UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_entry(
    *,
    seq: int,
    at: datetime,
    actor_id: str | None,
    subject_id: str | None,
    action: str,
    decision: str | None,
    reason: str | None,
    revision: int | None,
    details: dict[str, Any],
) -> str:
    """Canonical JSON (sorted keys, no spaces, ASCII) of one pseudonymous audit event."""
    return json.dumps(
        {
            "seq": seq,
            "at": canonical_time(at),
            "actor": actor_id,
            "subject": subject_id,
            "action": action,
            "decision": decision,
            "reason": reason,
            "revision": revision,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
