"""Principals (users, platforms, auditors, admins), their API keys and guardian links."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from consent_service.db import writes
from consent_service.errors import Forbidden, HandleTaken, InvalidRequest, NotFound, UnknownHandle
from consent_service.models import ApiKey, GuardianLink, Principal, PrincipalKind
from consent_service.security import new_api_key, parse_token
from consent_service.services.changes import Event, write_event
from policy.likeness import is_minor

HANDLE_RE = re.compile(r"^[a-z0-9_][a-z0-9_.]{1,30}$")


@dataclass(frozen=True)
class IssuedKey:
    principal: Principal
    token: str

    @property
    def key_id(self) -> str:
        parsed = parse_token(self.token)
        assert parsed is not None  # we minted it
        return parsed[0]


def normalize_handle(handle: str) -> str:
    """Canonical handle: NFKC, case-folded, without a leading '@'."""
    return unicodedata.normalize("NFKC", handle).strip().lstrip("@").casefold()


@writes
def create_principal(
    session: Session,
    *,
    kind: PrincipalKind,
    handle: str,
    display_name: str = "",
    birth_date: date | None = None,
    created_by: str | None,
) -> IssuedKey:
    """Create a principal with its first API key; the token is shown only in this result."""
    canonical = normalize_handle(handle)
    if not HANDLE_RE.fullmatch(canonical):
        raise InvalidRequest("handle must be 2-31 characters of a-z, 0-9, '_' or '.'")
    if kind is PrincipalKind.user and birth_date is None:
        raise InvalidRequest("a user needs a birth date, which decides the minors rules")
    if birth_date is not None and birth_date > date.today():
        raise InvalidRequest("birth date is in the future")
    principal = Principal(kind=kind, handle=canonical, display_name=display_name, birth_date=birth_date)
    session.add(principal)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise HandleTaken(f"handle {canonical!r} is taken") from exc
    token = _add_key(session, principal)
    write_event(
        session,
        Event("principal.create", created_by, principal.id, details={"kind": str(kind)}),
        revision=None,
    )
    session.commit()
    session.refresh(principal)
    return IssuedKey(principal=principal, token=token)


def _add_key(session: Session, principal: Principal) -> str:
    key = new_api_key()
    session.add(ApiKey(id=key.key_id, principal_id=principal.id, secret_hash=key.secret_hash))
    write_event(
        session, Event("api_key.issue", None, principal.id, details={"key_id": key.key_id}), revision=None
    )
    return key.token


@writes
def issue_key(session: Session, *, handle: str, issued_by: str | None) -> IssuedKey:
    """Issue an additional API key for an existing principal."""
    principal = get_by_handle(session, handle=handle)
    token = _add_key(session, principal)
    write_event(session, Event("api_key.issue_extra", issued_by, principal.id), revision=None)
    session.commit()
    return IssuedKey(principal=principal, token=token)


def list_keys(session: Session, *, handle: str) -> list[ApiKey]:
    """A principal's API keys, oldest first: ids and state only (the secrets were never stored)."""
    principal = get_by_handle(session, handle=handle)
    query = select(ApiKey).where(ApiKey.principal_id == principal.id)
    return list(session.exec(query.order_by(col(ApiKey.created_at), col(ApiKey.id))).all())


@writes
def revoke_key(session: Session, *, handle: str, key_id: str, revoked_by: str | None) -> ApiKey:
    """Revoke one of a principal's API keys, for good; revoking it again changes nothing.

    Instances that cached the key stop accepting it within their cache's time to live
    (CONSENT_API_KEY_CACHE_SECONDS); the caller drops it from its own cache at once.
    """
    principal = get_by_handle(session, handle=handle)
    key = session.get(ApiKey, key_id)
    if key is None or key.principal_id != principal.id:
        raise NotFound(f"@{principal.handle} has no API key {key_id!r}", details={"key_id": key_id})
    if not key.revoked:
        key.revoked = True
        session.add(key)
        write_event(
            session,
            Event("api_key.revoke", revoked_by, principal.id, details={"key_id": key.id}),
            revision=None,
        )
        session.commit()
    return key


# Built once: every request that names a person looks them up, and building the statement cost
# more than SQLite takes to run it.
_BY_HANDLE = select(Principal).where(col(Principal.handle) == bindparam("handle"))


def get_by_handle(session: Session, *, handle: str) -> Principal:
    principal = session.exec(_BY_HANDLE, params={"handle": normalize_handle(handle)}).first()
    if principal is None:
        raise UnknownHandle(f"unknown handle {handle!r}", details={"handle": handle})
    return principal


@writes
def link_guardian(
    session: Session, *, minor_handle: str, guardian_handle: str, linked_by: str, adult_age: int
) -> GuardianLink:
    """Link an adult guardian to a minor user."""
    minor = get_by_handle(session, handle=minor_handle)
    guardian = get_by_handle(session, handle=guardian_handle)
    if minor.kind is not PrincipalKind.user or guardian.kind is not PrincipalKind.user:
        raise InvalidRequest("guardian links join two users")
    if not is_minor(minor.birth_date, today=date.today(), adult_age=adult_age):
        raise InvalidRequest("only a minor can have a guardian")
    if is_minor(guardian.birth_date, today=date.today(), adult_age=adult_age):
        raise Forbidden("a guardian must be an adult")
    link = session.get(GuardianLink, (minor.id, guardian.id))
    if link is None:
        link = GuardianLink(minor_id=minor.id, guardian_id=guardian.id)
        session.add(link)
        write_event(
            session,
            Event("guardian.link", linked_by, minor.id, details={"guardian": guardian.id}),
            revision=None,
        )
        session.commit()
    return link


def is_guardian_of(session: Session, *, guardian_id: str, minor_id: str) -> bool:
    return session.get(GuardianLink, (minor_id, guardian_id)) is not None
