"""Cached lookups of principals for the hot path: API keys and handles."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from consent_service.errors import Unauthenticated, UnknownHandle
from consent_service.models import ApiKey, Principal, PrincipalKind, PrincipalRef
from consent_service.security import parse_token, secret_matches
from consent_service.services.principals import normalize_handle

HANDLE_CACHE_SIZE = 200_000


class Directory:
    """Answers "who is this key" and "who is this handle" mostly from memory.

    Handles and birth dates never change once created, so they are cached
    without expiry (bounded LRU). API keys are cached for `key_ttl` seconds:
    a key disabled in the database stops working within that time.
    """

    def __init__(self, engine: Engine, *, key_ttl: float) -> None:
        self._engine = engine
        self._key_ttl = key_ttl
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, str, PrincipalRef]] = {}
        self._handles: OrderedDict[str, PrincipalRef] = OrderedDict()

    async def authenticate(self, token: str | None) -> PrincipalRef:
        """The principal behind a bearer token, or Unauthenticated."""
        parsed = parse_token(token or "")
        if parsed is None:
            raise Unauthenticated("missing or malformed API key")
        key_id, secret = parsed
        cached = self._keys.get(key_id)
        if cached is None or cached[0] < time.monotonic():
            cached = await asyncio.to_thread(self._load_key, key_id)
        _, secret_hash, principal = cached
        if not secret_matches(secret, secret_hash):
            raise Unauthenticated("invalid API key")
        return principal

    def _load_key(self, key_id: str) -> tuple[float, str, PrincipalRef]:
        with Session(self._engine) as session:
            key = session.get(ApiKey, key_id)
            principal = session.get(Principal, key.principal_id) if key is not None else None
            if key is None or key.revoked or principal is None or principal.disabled:
                raise Unauthenticated("invalid API key")
            entry = (time.monotonic() + self._key_ttl, key.secret_hash, PrincipalRef.of(principal))
        with self._lock:
            self._keys[key_id] = entry
        return entry

    async def users_by_handles(self, handles: list[str]) -> dict[str, PrincipalRef]:
        """Map each handle to its user, or raise UnknownHandle naming every unknown one."""
        canonical = {h: normalize_handle(h) for h in handles}
        missing = [c for c in set(canonical.values()) if c not in self._handles]
        if missing:
            await asyncio.to_thread(self._load_handles, missing)
        unknown = sorted(h for h, c in canonical.items() if c not in self._handles)
        if unknown:
            raise UnknownHandle(f"unknown handles: {', '.join(unknown)}", details={"handles": unknown})
        return {h: self._handles[c] for h, c in canonical.items()}

    def _load_handles(self, handles: list[str]) -> None:
        with Session(self._engine) as session:
            query = select(Principal).where(
                col(Principal.handle).in_(handles), Principal.kind == PrincipalKind.user
            )
            refs = [PrincipalRef.of(p) for p in session.exec(query).all()]
        with self._lock:
            for ref in refs:
                self._handles[ref.handle] = ref
                self._handles.move_to_end(ref.handle)
            while len(self._handles) > HANDLE_CACHE_SIZE:
                self._handles.popitem(last=False)
