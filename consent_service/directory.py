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
# A cached key is reloaded in the background once this share of its time to live is left.
_REFRESH_AHEAD = 0.2
_KeyEntry = tuple[float, str, PrincipalRef]  # expires at (monotonic), secret hash, principal


class Directory:
    """Answers "who is this key" and "who is this handle" mostly from memory.

    Handles and birth dates never change once created, so they are cached
    without expiry (bounded LRU). API keys are cached for `key_ttl` seconds:
    a key disabled in the database stops working within that time.

    A key is reloaded by one load at a time, shared by every request that needs it,
    and ahead of its expiry while requests keep answering from the cache. When
    each request that found the key expired started a load of its own, a platform
    sending 1,500 checks a second stalled every `key_ttl` seconds: dozens of loads
    queued on the thread pool and took the GIL from the event loop, and every check
    waited 40-80 ms (measured: bench/consent_check.py's HTTP setup, traced).
    """

    def __init__(self, engine: Engine, *, key_ttl: float) -> None:
        self._engine = engine
        self._key_ttl = key_ttl
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyEntry] = {}
        self._loading: dict[str, asyncio.Future[_KeyEntry]] = {}
        self._forgotten = 0  # how many keys forget_key has dropped: a load spanning one is not kept
        self._handles: OrderedDict[str, PrincipalRef] = OrderedDict()

    async def authenticate(self, token: str | None) -> PrincipalRef:
        """The principal behind a bearer token, or Unauthenticated."""
        parsed = parse_token(token or "")
        if parsed is None:
            raise Unauthenticated("missing or malformed API key")
        key_id, secret = parsed
        cached, now = self._keys.get(key_id), time.monotonic()
        if cached is None or cached[0] <= now:
            # Shielded: one request that goes away must not cancel the load the others await.
            cached = await asyncio.shield(self._load_once(key_id))
        elif cached[0] - now < self._key_ttl * _REFRESH_AHEAD:
            self._load_once(key_id)
        _, secret_hash, principal = cached
        if not secret_matches(secret, secret_hash):
            raise Unauthenticated("invalid API key")
        return principal

    def forget_key(self, key_id: str) -> None:
        """Drop a cached key, so that the next request with it reads it again (after a revocation).

        A load that began before the revocation committed may have read the old row: it
        answers the requests already waiting on it, but later ones start a load of their own,
        and its entry is not cached.
        """
        with self._lock:
            self._keys.pop(key_id, None)
            self._loading.pop(key_id, None)
            self._forgotten += 1

    def _load_once(self, key_id: str) -> asyncio.Future[_KeyEntry]:
        """The load of this key in flight, started now if there is none."""
        loading = self._loading.get(key_id)
        if loading is None or not self._key_ttl:
            # With no caching, each request reads the key as it is once the request arrived.
            loading = asyncio.ensure_future(asyncio.to_thread(self._load_key, key_id))
            self._loading[key_id] = loading
            loading.add_done_callback(lambda done: self._loaded(key_id, done))
        return loading

    def _loaded(self, key_id: str, done: asyncio.Future[_KeyEntry]) -> None:
        if self._loading.get(key_id) is done:
            del self._loading[key_id]
        if not done.cancelled():
            done.exception()  # a load ahead of expiry has no awaiter to take its error

    def _load_key(self, key_id: str) -> _KeyEntry:
        forgotten = self._forgotten
        with Session(self._engine) as session:
            key = session.get(ApiKey, key_id)
            principal = session.get(Principal, key.principal_id) if key is not None else None
            if key is None or key.revoked or principal is None or principal.disabled:
                with self._lock:
                    self._keys.pop(key_id, None)  # found out ahead of expiry: stop now
                raise Unauthenticated("invalid API key")
            entry = (time.monotonic() + self._key_ttl, key.secret_hash, PrincipalRef.of(principal))
        with self._lock:
            if self._forgotten == forgotten:
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
