"""The consent-check hot path: group-committed audit rows and cached principal lookups."""

import asyncio
import time
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


def _user_with_key(engine, handle="alice"):
    with Session(engine, expire_on_commit=False) as s:
        return create_principal(
            s, kind=PrincipalKind.user, handle=handle, birth_date=date(1990, 1, 1), created_by=None
        )


def _disable(engine, handle="alice"):
    with Session(engine) as s:
        p = s.exec(select(Principal).where(Principal.handle == handle)).one()
        p.disabled = True
        s.add(p)
        s.commit()


class _CountingDirectory(Directory):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loads = 0

    def _load_key(self, key_id):
        self.loads += 1
        time.sleep(0.02)  # a load that takes a while, as under load
        return super()._load_key(key_id)


def test_directory_loads_an_expired_key_once_for_every_request_waiting_on_it(db_url):
    engine = make_engine(db_url)
    issued = _user_with_key(engine)
    directory = _CountingDirectory(engine, key_ttl=5)

    async def burst():
        first = asyncio.ensure_future(directory.authenticate(issued.token))
        await asyncio.sleep(0)
        first.cancel()  # one caller going away must not cancel the load the others wait on
        refs = await asyncio.gather(*[directory.authenticate(issued.token) for _ in range(40)])
        return first, refs

    first, refs = asyncio.run(burst())
    assert first.cancelled()
    assert {r.handle for r in refs} == {"alice"}
    assert directory.loads == 1
    engine.dispose()


def test_directory_reloads_a_key_ahead_of_expiry_and_drops_one_found_disabled(db_url):
    engine = make_engine(db_url)
    issued = _user_with_key(engine)
    directory = _CountingDirectory(engine, key_ttl=2)

    async def scenario():
        await directory.authenticate(issued.token)
        await asyncio.sleep(1.7)  # inside the last fifth of the key's time to live, with a margin
        _disable(engine)
        # Still answered from the cache, within the time to live; a reload starts behind it.
        assert (await directory.authenticate(issued.token)).handle == "alice"
        for _ in range(100):
            await asyncio.sleep(0.01)
            if directory.loads == 2 and not directory._loading:
                break
        assert directory.loads == 2
        with pytest.raises(Unauthenticated):
            await directory.authenticate(issued.token)

    asyncio.run(scenario())
    engine.dispose()


def test_directory_forgets_a_revoked_key_even_while_a_load_of_it_is_in_flight(db_url, monkeypatch):
    import threading

    from consent_service.models import ApiKey, PrincipalRef

    engine = make_engine(db_url)
    issued = _user_with_key(engine)
    key_id = issued.key_id
    directory = Directory(engine, key_ttl=5)
    has_read, carry_on = threading.Event(), threading.Event()
    of = PrincipalRef.of

    def after_the_read(cls, principal):
        has_read.set()  # the load has read the key while it was still valid
        carry_on.wait(5)
        return of(principal)

    monkeypatch.setattr(PrincipalRef, "of", classmethod(after_the_read))

    async def scenario():
        before = asyncio.ensure_future(directory.authenticate(issued.token))
        await asyncio.to_thread(has_read.wait, 5)
        with Session(engine) as s:
            key = s.get(ApiKey, key_id)
            key.revoked = True
            s.add(key)
            s.commit()
        directory.forget_key(key_id)
        after = asyncio.ensure_future(directory.authenticate(issued.token))
        carry_on.set()
        assert (await before).handle == "alice"  # it arrived before the revocation
        with pytest.raises(Unauthenticated):
            await after
        with pytest.raises(Unauthenticated):  # and the old row was not cached
            await directory.authenticate(issued.token)

    asyncio.run(scenario())
    engine.dispose()


def test_audit_writer_on_sqlite_waits_for_the_writer_lock_without_blocking_the_loop(
    tmp_path, sqlite_template
):
    """Inline commits retry while another writer of the process holds SQLite; the loop keeps running."""
    import shutil

    from consent_service.db import writer_lock

    shutil.copy(sqlite_template, tmp_path / "a.db")
    engine = make_engine(f"sqlite:///{tmp_path}/a.db")
    writer = AuditWriter(engine)
    writer.start()
    lock = writer_lock(engine)
    assert lock is not None

    async def scenario():
        lock.acquire()
        append = asyncio.ensure_future(writer.append([Event("consent.check", "a", "b")], revision=1))
        ticks = 0
        for _ in range(20):  # the loop still runs other work while the commit waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not append.done()
        lock.release()
        await asyncio.wait_for(append, timeout=5)
        return ticks

    assert asyncio.run(scenario()) == 20
    writer.stop()
    with Session(engine) as s:
        assert len(s.exec(select(AuditEvent).where(AuditEvent.action == "consent.check")).all()) == 1
    engine.dispose()


def test_insert_values_writes_many_rows_in_chunks(db_url):
    from audit.log import tree_engine_for
    from consent_service.db import insert_values, write_connection
    from consent_service.models import LogNode

    engine = tree_engine_for(make_engine(db_url))
    rows = [(7, i, i.to_bytes(32, "big")) for i in range(2500)]  # three statements
    with write_connection(engine) as conn:
        insert_values(conn, table=LogNode.__table__, columns=("level", "idx", "hash"), rows=rows)
        conn.commit()
    with Session(engine) as s:
        stored = s.exec(select(LogNode).where(LogNode.level == 7).order_by(LogNode.idx)).all()
    assert [(n.level, n.idx, bytes(n.hash)) for n in stored] == rows
    with write_connection(engine) as conn, pytest.raises(KeyError):
        insert_values(conn, table=LogNode.__table__, columns=("level", "nope"), rows=[(1, 2)])
    engine.dispose()


def test_wal_checkpointer_starts_a_growing_wal_over(tmp_path, sqlite_template):
    """PASSIVE checkpoints alone never let a busy WAL restart; past the threshold the locked pass does."""
    import shutil
    import threading

    from consent_service.db import WalCheckpointer

    shutil.copy(sqlite_template, tmp_path / "w.db")
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    writer = AuditWriter(engine)
    writer.start()
    locked_passes: list[str] = []

    def foreground(fn):
        # The housekeeper runs the locked pass on a thread that is not at SCHED_IDLE.
        locked_passes.append(threading.current_thread().name)
        return fn()

    checkpointer = WalCheckpointer(engine, restart_pages=200, foreground=foreground)
    stop = threading.Event()

    async def write_until_stopped():
        i = 0
        while not stop.is_set():
            await writer.append([Event("consent.check", f"a{i}", "s")], revision=1)
            i += 1
            await asyncio.sleep(0)

    def wal_restarts() -> int:
        # The WAL header's checkpoint sequence number counts the times the WAL was started over.
        with open(tmp_path / "w.db-wal", "rb") as f:
            return int.from_bytes(f.read(32)[12:16], "big")

    asyncio.run(writer.append([Event("consent.check", "first", "s")], revision=1))
    before = wal_restarts()
    restarted = []
    thread = threading.Thread(target=lambda: asyncio.run(write_until_stopped()))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # writes keep coming while the checkpointer works
            if checkpointer.checkpoint():
                restarted.append(True)
                break
            time.sleep(0.01)  # let the WAL grow past the threshold
    finally:
        stop.set()
        thread.join()
    asyncio.run(writer.append([Event("consent.check", "last", "s")], revision=1))
    writer.stop()
    assert restarted, "the WAL never reached the threshold or was never checkpointed to its end"
    assert locked_passes, "the locked pass did not go through `foreground`"
    after = wal_restarts()
    assert after > before  # the next commit after the locked pass started it over
    engine.dispose()


def test_audit_writer_keeps_its_thread_when_sqlite_commits_fsync(tmp_path, sqlite_template):
    """synchronous=FULL waits on an fsync per commit: that wait stays off the event loop."""
    import shutil
    import threading

    shutil.copy(sqlite_template, tmp_path / "f.db")
    for synchronous, threaded in (("FULL", True), ("NORMAL", False)):
        engine = make_engine(f"sqlite:///{tmp_path}/f.db", sqlite_synchronous=synchronous)
        writer = AuditWriter(engine)
        writer.start()
        names = {t.name for t in threading.enumerate()}
        asyncio.run(writer.append([Event("consent.check", synchronous, "s")], revision=1))
        writer.stop()
        assert ("audit-writer" in names) is threaded
        with Session(engine) as s:
            assert s.exec(select(AuditEvent).where(AuditEvent.actor_id == synchronous)).one()
        engine.dispose()


def test_audit_appender_stores_exactly_what_the_sqlalchemy_path_stores(
    sqlite_template, tmp_path, monkeypatch
):
    """The event loop's raw-sqlite3 appender and write_event_groups must leave identical rows."""
    import shutil
    import sqlite3
    from datetime import UTC, datetime

    from consent_service.db import write_connection
    from consent_service.services import changes

    monkeypatch.setattr(changes, "utcnow", lambda: datetime(2026, 11, 29, 21, 0, 0, 123456, tzinfo=UTC))
    groups = [
        (
            [
                Event(
                    "consent.check", "a1", "s1", "allow", "granted", {"check_id": "c1", "prompt_sha256": None}
                )
            ],
            7,
        ),
        (
            [
                Event(
                    "consent.check", "a2", "s2", "deny", "blocked", {"note": "caf\u00e9 \u2713", "n": [1, 2]}
                )
            ],
            None,
        ),
        ([Event("grant.create", None), Event("grant.revoke", "a3", None, details={})], 9),
    ]
    paths = {kind: tmp_path / f"{kind}.db" for kind in ("orm", "raw")}
    for path in paths.values():
        shutil.copy(sqlite_template, path)
    orm = make_engine(f"sqlite:///{paths['orm']}")
    with write_connection(orm) as conn:
        changes.write_event_groups(conn, groups)
        conn.commit()
    raw = make_engine(f"sqlite:///{paths['raw']}")
    appender = changes.SqliteAuditAppender(raw)
    appender.write(groups)
    appender.write([])  # nothing to write: no transaction, no sequence reserved
    appender.close()

    def dump(path):
        with sqlite3.connect(path) as db:
            return db.execute("SELECT * FROM audit_event ORDER BY seq").fetchall(), db.execute(
                "SELECT next FROM log_counter"
            ).fetchall()

    orm_rows, raw_rows = dump(paths["orm"]), dump(paths["raw"])
    assert len(orm_rows[0]) == 4 and orm_rows == raw_rows
    with Session(raw) as s:  # and the ORM reads the appender's rows back as it wrote its own
        first = s.exec(select(AuditEvent).order_by(AuditEvent.seq)).first()
    assert first.details == {"check_id": "c1", "prompt_sha256": None} and first.at.year == 2026
    orm.dispose()
    raw.dispose()


def test_audit_appender_rolls_back_a_failed_batch(sqlite_template, tmp_path):
    import shutil

    from consent_service.services.changes import SqliteAuditAppender

    path = tmp_path / "c.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    appender = SqliteAuditAppender(engine)
    appender.write([([Event("consent.check", "a", "b")], 1)])
    with pytest.raises(TypeError):  # details that JSON cannot encode fail inside the transaction
        appender.write([([Event("consent.check", "a", "b", details={"x": object()})], 1)])
    appender.write([([Event("consent.check", "c", "d")], 2)])
    appender.close()
    with Session(engine) as s:
        rows = s.exec(select(AuditEvent).order_by(AuditEvent.seq)).all()
    assert [(r.seq, r.actor_id) for r in rows] == [(0, "a"), (1, "c")]  # no gap, nothing half-written
    engine.dispose()


def test_app_applies_the_gil_switch_interval(settings):
    import sys

    from fastapi.testclient import TestClient

    from consent_service.app import create_app

    before = sys.getswitchinterval()
    try:
        with TestClient(create_app(settings.model_copy(update={"gil_switch_interval_ms": 2.0}))):
            assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)


def test_new_sqlite_databases_get_small_pages_and_old_ones_keep_theirs(tmp_path):
    """Half-size pages halve the WAL a check writes; SQLite can set them only on a new file."""
    import sqlite3

    from consent_service.db import SQLITE_PAGE_SIZE, migrate

    migrate(f"sqlite:///{tmp_path}/new.db")
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (x)")
    old_size = old.execute("PRAGMA page_size").fetchone()[0]
    old.close()
    assert old_size != SQLITE_PAGE_SIZE  # SQLite's own default, 4 KB
    for name, expected in (("new.db", SQLITE_PAGE_SIZE), ("old.db", old_size)):
        engine = make_engine(f"sqlite:///{tmp_path}/{name}")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA page_size").scalar_one() == expected
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        engine.dispose()


def test_wal_checkpointer_syncs_the_wal_before_the_locked_pass(tmp_path, sqlite_template, monkeypatch):
    """Every writer waits through the locked pass; the WAL and the database are synced just before it."""
    import shutil

    from consent_service import db as db_module
    from consent_service.db import WalCheckpointer

    shutil.copy(sqlite_template, tmp_path / "s.db")
    engine = make_engine(f"sqlite:///{tmp_path}/s.db")
    writer = AuditWriter(engine)
    writer.start()
    for i in range(40):
        asyncio.run(writer.append([Event("consent.check", f"a{i}", "s")], revision=1))
    steps: list[str] = []
    real_sync = db_module._fdatasync
    monkeypatch.setattr(db_module, "_fdatasync", lambda path: (steps.append(path), real_sync(path)))

    def foreground(fn):
        steps.append("locked pass")
        return fn()

    assert WalCheckpointer(engine, restart_pages=1, foreground=foreground).checkpoint()
    writer.stop()
    database = str(tmp_path / "s.db")
    assert steps[-3:] == [database, database + "-wal", "locked pass"]
    engine.dispose()
