"""The consent-check hot path: group-committed audit rows and cached principal lookups."""

import asyncio
from datetime import date

import pytest
from sqlmodel import Session, select

from consent_service.audit_writer import AuditWriter
from consent_service.db import make_engine
from consent_service.directory import Directory
from consent_service.errors import AuditUnavailable, Unauthenticated, UnknownHandle
from consent_service.models import AuditEvent, Principal, PrincipalKind
from consent_service.services.changes import Event
from consent_service.services.principals import create_principal


def test_audit_writer_commits_batches_before_answering(db_url):
    engine = make_engine(db_url)
    writer = AuditWriter(engine, max_batch=7)
    writer.start()

    async def many():
        await asyncio.gather(
            *[writer.append([Event("consent.check", f"a{i}", f"s{i}")], revision=3) for i in range(50)]
        )

    asyncio.run(many())
    writer.stop()
    with Session(engine) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.action == "consent.check")).all()
    assert sorted(r.actor_id for r in rows) == sorted(f"a{i}" for i in range(50))
    assert {r.revision for r in rows} == {3}
    engine.dispose()


def test_audit_writer_failure_fails_the_request_closed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")  # no tables: every insert fails
    writer = AuditWriter(engine)
    writer.start()
    with pytest.raises(AuditUnavailable):
        asyncio.run(writer.append([Event("consent.check", "a", "b")], revision=1))
    writer.stop()
    with pytest.raises(AuditUnavailable):
        asyncio.run(writer.append([Event("consent.check", "a", "b")], revision=1))  # stopped


def test_directory_key_cache_expires_and_handles_resolve(db_url):
    engine = make_engine(db_url)
    with Session(engine, expire_on_commit=False) as s:
        issued = create_principal(
            s, kind=PrincipalKind.user, handle="alice", birth_date=date(1990, 1, 1), created_by=None
        )
    directory = Directory(engine, key_ttl=0)
    assert asyncio.run(directory.authenticate(issued.token)).handle == "alice"
    with Session(engine) as s:
        p = s.exec(select(Principal).where(Principal.handle == "alice")).one()
        p.disabled = True
        s.add(p)
        s.commit()
    with pytest.raises(Unauthenticated):
        asyncio.run(directory.authenticate(issued.token))  # ttl 0: the change is seen at once
    refs = asyncio.run(directory.users_by_handles(["@Alice"]))
    assert refs["@Alice"].handle == "alice"
    with pytest.raises(UnknownHandle) as err:
        asyncio.run(directory.users_by_handles(["alice", "ghost"]))
    assert err.value.details == {"handles": ["ghost"]}
    engine.dispose()
