"""The SQLite default's helper processes: the audit appender child and the housekeeper.

Each test starts real spawned processes over a real database file; none stubs them.
"""

import asyncio
import fcntl
import itertools
import multiprocessing
import os
import pickle
import shutil
import signal
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, func, select

from consent_service.app import create_app
from consent_service.audit_process import AppenderProcess, answer, to_wire
from consent_service.audit_writer import AuditWriter
from consent_service.db import make_engine
from consent_service.errors import AuditUnavailable, Overloaded
from consent_service.housekeeping import Foreground, HousekeeperProcess, _yield_to_requests
from consent_service.models import AuditEvent, LogCheckpoint
from consent_service.receipts import ReceiptKeys
from consent_service.services.changes import Event
from consent_service.settings import Settings
from tests.conftest import Api, bootstrap_admin, full_log_check


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    shutil.copy(sqlite_template, tmp_path / "consent.db")
    return f"sqlite:///{tmp_path}/consent.db"


@pytest.fixture
def process_settings(tmp_path, sqlite_url) -> Settings:
    """The default layout (SQLite only: PostgreSQL keeps both in threads)."""
    return Settings(
        environment="test",
        database_url=sqlite_url,
        data_dir=tmp_path / "data",
        housekeeping="process",
        audit_writer="process",
        log_integrate_interval_seconds=0.2,
    )


KEYS = ReceiptKeys(signing=Ed25519PrivateKey.generate())


def _claims(check_id: str) -> dict:
    return {
        "jti": check_id,
        "sub": "actor",
        "cameos": ["cam"],
        "iat": int(time.time()),
        "exp": int(time.time()) + 600,
    }


def _checks(n: int, *, prefix: str = "a") -> list[list[Event]]:
    return [
        [Event("consent.check", f"{prefix}{i}", f"s{i}", decision="allow", reason="granted")]
        for i in range(n)
    ]


def _actors(engine) -> list[str]:
    with Session(engine) as s:
        return sorted(r.actor_id for r in s.exec(select(AuditEvent)).all())


def test_offloaded_writer_commits_every_row_before_answering(sqlite_url):
    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine, offload="process")
    writer.start()
    answered: list[int] = []

    async def one(i: int, events: list[Event]) -> None:
        await writer.append(events, revision=4)
        # The row is in the database, visible to another connection, before the answer.
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            assert db.execute(
                "SELECT count(*) FROM audit_event WHERE actor_id = ?", (f"a{i}",)
            ).fetchone() == (1,)
        answered.append(i)

    async def many() -> None:
        await asyncio.gather(*[one(i, events) for i, events in enumerate(_checks(60))])

    asyncio.run(many())
    child = writer._child
    assert child is not None and child.pid not in (None, os.getpid())
    writer.stop()
    assert sorted(answered) == list(range(60))
    assert _actors(engine) == sorted(f"a{i}" for i in range(60))
    with Session(engine) as s:
        seqs = sorted(r.seq for r in s.exec(select(AuditEvent)).all())
    assert seqs == list(range(60))  # dense log positions, as on the event loop
    engine.dispose()


def test_offloaded_writer_sends_batches_that_fit_a_pipe_buffer(sqlite_url):
    """Many waiting requests of several rows each: batches of at most MAX_BATCH_ROWS rows, all committed."""
    from consent_service.audit_process import MAX_BATCH_ROWS

    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine, keys=KEYS, offload="process")
    writer.start()
    child = writer._child
    assert child is not None
    sent: list[int] = []
    original = child.send

    def counting_send(requests, **kw):
        sent.append(sum(len(events) for events, _, _ in requests))
        assert len(pickle.dumps(to_wire(requests))) < 65_536  # one pipe buffer, receipts' claims included
        original(requests, **kw)

    child.send = counting_send  # type: ignore[method-assign]
    requests = [
        [
            Event("consent.check", f"r{i}", f"s{i}.{j}", decision="deny", reason="not_granted")
            for j in range(3)
        ]
        for i in range(150)
    ]

    async def many() -> list[str | None]:
        return await asyncio.gather(
            *[
                writer.append(events, revision=2, receipt=_claims(f"c{i}"))
                for i, events in enumerate(requests)
            ]
        )

    receipts = asyncio.run(many())
    writer.stop()
    assert [KEYS.verify(r, now=time.time())["jti"] for r in receipts] == [f"c{i}" for i in range(150)]
    assert sum(sent) == 450 and max(sent) <= MAX_BATCH_ROWS and len(sent) >= 3
    with Session(engine) as s:
        rows = s.exec(select(AuditEvent)).all()
    assert sorted(r.seq for r in rows) == list(range(450))
    assert len({r.actor_id for r in rows}) == 150
    engine.dispose()


def test_offloaded_writer_fails_closed_when_its_process_dies_then_recovers(sqlite_url):
    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine, offload="process")
    writer.start()
    asyncio.run(writer.append(_checks(1, prefix="before")[0], revision=1))
    child = writer._child
    assert child is not None and child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(AuditUnavailable):
        asyncio.run(writer.append(_checks(1, prefix="lost")[0], revision=1))
    asyncio.run(writer.append(_checks(1, prefix="after")[0], revision=1))  # a new process took over
    writer.stop()
    assert _actors(engine) == ["after0", "before0"]
    engine.dispose()


def test_offloaded_writer_reports_a_failed_commit(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")  # no tables: every insert fails
    writer = AuditWriter(engine, offload="process")
    writer.start()
    with pytest.raises(AuditUnavailable):
        asyncio.run(writer.append(_checks(1)[0], revision=1))
    writer.stop()


WRITER_MODES = ["child", "loop", "thread"]


def _writer(url: str, mode: str, **kw) -> AuditWriter:
    """The three places a commit runs: the appender child, the event loop, a thread (synchronous=FULL)."""
    engine = make_engine(url, sqlite_synchronous="FULL" if mode == "thread" else "NORMAL")
    writer = AuditWriter(engine, offload="process" if mode == "child" else None, **kw)
    assert (writer._child is not None, writer._inline) == {
        "child": (True, True),
        "loop": (False, True),
        "thread": (False, False),
    }[mode]
    return writer


@pytest.mark.parametrize("mode", WRITER_MODES)
def test_writer_signs_a_receipt_once_its_rows_are_committed(sqlite_url, mode):
    writer = _writer(sqlite_url, mode, keys=KEYS)
    writer.start()

    async def one(events: list[Event], claims: dict | None) -> str | None:
        receipt = await writer.append(events, revision=3, receipt=claims)
        with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:
            actor = events[0].actor_id
            assert db.execute("SELECT count(*) FROM audit_event WHERE actor_id = ?", (actor,)).fetchone() == (
                1,
            )
        return receipt

    claims = _claims("c0")

    async def both() -> list[str | None]:
        asked, denied = _checks(2)
        return await asyncio.gather(one(asked, claims), one(denied, None))

    try:
        signed, unsigned = asyncio.run(both())
    finally:
        writer.stop()
    assert unsigned is None
    assert KEYS.verify(signed, now=time.time()) == claims


@pytest.mark.parametrize("mode", WRITER_MODES)
def test_writer_signs_no_receipt_for_rows_it_could_not_commit(tmp_path, mode):
    writer = _writer(f"sqlite:///{tmp_path}/empty.db", mode, keys=KEYS)  # no tables: every insert fails
    writer.start()
    try:
        with pytest.raises(AuditUnavailable):
            asyncio.run(writer.append(_checks(1)[0], revision=1, receipt=_claims("c0")))
    finally:
        writer.stop()


@pytest.mark.parametrize("mode", WRITER_MODES)
def test_writer_refuses_appends_beyond_max_pending_and_commits_the_rest(sqlite_url, mode):
    writer = _writer(sqlite_url, mode, max_pending=2)
    writer.start()

    async def three() -> list:
        # All three reach the writer before any commit answers: two wait, the third is refused.
        groups = _checks(3, prefix="p")
        return await asyncio.gather(*(writer.append(g, revision=1) for g in groups), return_exceptions=True)

    try:
        first = asyncio.run(three())
        again = asyncio.run(writer.append(_checks(1, prefix="q")[0], revision=1))
    finally:
        writer.stop()
    assert first[:2] == [None, None] and isinstance(first[2], Overloaded)
    assert first[2].details == {"retry_after_seconds": 1}
    assert again is None  # the refusal held nothing back: the next append goes through
    assert _actors(writer._engine) == ["p0", "p1", "q0"]


def test_writer_without_a_key_refuses_to_be_asked_for_a_receipt(sqlite_url):
    writer = AuditWriter(make_engine(sqlite_url))
    writer.start()
    try:
        with pytest.raises(ValueError, match="no receipt key"):
            asyncio.run(writer.append(_checks(1)[0], revision=1, receipt=_claims("c0")))
    finally:
        writer.stop()


def test_appender_answers_arriving_in_pieces_are_put_together():
    """The loop's end of the pipe is non-blocking: a part of an answer must not read as a dead child."""
    parent_end, child_end = multiprocessing.Pipe(duplex=True)
    os.set_blocking(parent_end.fileno(), False)  # what the event loop's add_reader does
    appender = AppenderProcess(url="sqlite://", sqlite_synchronous="NORMAL")
    appender._conn = parent_end
    got: list = []
    appender._on_done = got.append
    big = (None, [f"{i:03}" + "r" * 477 for i in range(100)])  # a full batch's receipts, 48 KB
    r, w = os.pipe()
    answer(SimpleNamespace(fileno=lambda: w), big)
    os.close(w)
    framed = os.read(r, 1 << 17)
    os.close(r)
    writer = os.fdopen(os.dup(child_end.fileno()), "wb", buffering=0)
    assert len(framed) > 40_000
    for start, end in ((0, 3), (3, 20_000), (20_000, len(framed))):
        assert got == [] and appender._conn is parent_end
        writer.write(framed[start:end])
        appender._readable()
        appender._readable()  # woken again with nothing more to read: still waiting, not lost
    assert got == [big]
    appender._on_done = got.append
    writer.close()
    child_end.close()  # the child's end closes: that is a lost child
    appender._readable()
    assert got[-1][0] == "the audit appender process exited" and appender._conn is None


def test_audit_appender_checkpoints_only_at_the_backstop(sqlite_url):
    """Should the housekeeper starve or die, the appender's own commits still bound the WAL."""
    from consent_service.db import AUTOCHECKPOINT_BACKSTOP_PAGES
    from consent_service.services.changes import SqliteAuditAppender

    engine = make_engine(sqlite_url)
    appender = SqliteAuditAppender(engine)
    try:
        assert appender._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (
            AUTOCHECKPOINT_BACKSTOP_PAGES,
        )
    finally:
        appender.close()
        engine.dispose()


def test_audit_appender_keeps_its_statement_journal_in_memory_and_returns_its_connection_as_it_came(
    sqlite_url,
):
    """Large batches spilled the INSERT's statement journal to a temporary file in every commit."""
    from consent_service.db import SQLITE_BUSY_TIMEOUT_MS
    from consent_service.services.changes import SqliteAuditAppender

    engine = make_engine(sqlite_url, poolclass=StaticPool)  # one connection: the pool hands it back
    appender = SqliteAuditAppender(engine)
    db = appender._db
    assert db.execute("PRAGMA temp_store").fetchone() == (2,)  # MEMORY
    appender.close()
    try:
        raw = engine.raw_connection()
        assert raw.driver_connection is db
        assert db.execute("PRAGMA temp_store").fetchone() == (0,)  # DEFAULT
        assert db.execute("PRAGMA busy_timeout").fetchone() == (SQLITE_BUSY_TIMEOUT_MS,)
        raw.close()
    finally:
        engine.dispose()


def test_loop_writer_waits_for_another_process_without_blocking_the_loop(sqlite_url):
    """A writer elsewhere holds SQLite's lock: the batch retries from the loop, which keeps running."""
    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine)
    writer.start()
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks: list[float] = []

    async def scenario() -> float:
        append = asyncio.ensure_future(writer.append(_checks(1)[0], revision=1))
        started = time.monotonic()
        while time.monotonic() - started < 0.15:
            await asyncio.sleep(0.005)
            ticks.append(time.monotonic())
        assert not append.done()  # still waiting for the lock
        other.execute("ROLLBACK")
        await append
        return time.monotonic() - started

    took = asyncio.run(scenario())
    writer.stop()
    other.close()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 10 and max(gaps) < 0.1, "the event loop was blocked while the lock was held"
    assert took < 5
    assert _actors(engine) == ["a0"]
    engine.dispose()


def _lock_is_held(path) -> bool:
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_one_housekeeper_per_data_dir_integrates_the_log(process_settings, sqlite_url):
    settings = process_settings
    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine)
    writer.start()

    async def write() -> None:
        await asyncio.gather(*[writer.append(events, revision=1) for events in _checks(25)])

    asyncio.run(write())
    writer.stop()
    first, second = HousekeeperProcess(settings), HousekeeperProcess(settings)
    first.start()
    second.start()
    lock = settings.data_dir / "housekeeping.lock"
    try:
        deadline = time.monotonic() + 60
        size = 0
        while time.monotonic() < deadline and size < 25:
            time.sleep(0.1)
            with Session(engine) as s:
                size = s.exec(select(func.max(LogCheckpoint.tree_size))).one() or 0
        assert size == 25
        assert _lock_is_held(lock)
        # Both run only on CPU time that requests leave idle, the standby too (once it has
        # started: a spawned child imports its parent's main module first).
        pids = [first._process.pid, second._process.pid]
        while time.monotonic() < deadline and {os.sched_getscheduler(p) for p in pids} != {os.SCHED_IDLE}:
            time.sleep(0.1)
        assert [os.sched_getscheduler(p) for p in pids] == [os.SCHED_IDLE] * 2
        # ...all but the one thread that holds SQLite's write lock for it (Foreground).
        policies = [os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{pids[0]}/task")]
        assert policies.count(os.SCHED_OTHER) == 1 and policies.count(os.SCHED_IDLE) >= 2, policies
        first.stop()
        # The standby takes over: new rows still get integrated.
        writer = AuditWriter(engine)
        writer.start()
        asyncio.run(writer.append(_checks(1, prefix="late")[0], revision=1))
        writer.stop()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and size < 26:
            time.sleep(0.1)
            with Session(engine) as s:
                size = s.exec(select(func.max(LogCheckpoint.tree_size))).one() or 0
        assert size == 26
    finally:
        first.stop()
        second.stop()
    assert not _lock_is_held(lock)
    engine.dispose()


def test_the_housekeeper_deletes_verification_uploads_past_their_time(process_settings, sqlite_url, tmp_path):
    from datetime import date, timedelta

    from consent_service.models import (
        Cameo,
        PrincipalKind,
        VerificationAttempt,
        VerificationChallenge,
        VerificationStatus,
        utcnow,
    )
    from consent_service.services.principals import create_principal

    engine = make_engine(sqlite_url)
    uploads = {name: tmp_path / f"{name}.mp4" for name in ("due", "kept")}
    with Session(engine, expire_on_commit=False) as s:
        owner = create_principal(
            s, kind=PrincipalKind.user, handle="alice", birth_date=date(1990, 1, 1), created_by=None
        ).principal
        cameo = Cameo(owner_id=owner.id)
        s.add(cameo)
        now = utcnow()
        for name, path in uploads.items():
            path.write_bytes(b"raw selfie video")
            challenge = VerificationChallenge(
                owner_id=owner.id, cameo_id=cameo.id, digits="4815", nonce_sha256="0" * 64, expires_at=now
            )
            s.add(challenge)
            s.flush()
            s.add(
                VerificationAttempt(
                    owner_id=owner.id,
                    cameo_id=cameo.id,
                    challenge_id=challenge.id,
                    status=VerificationStatus.verified,
                    upload_path=str(path),
                    upload_delete_after=now + timedelta(seconds=-1 if name == "due" else 3600),
                )
            )
        s.commit()
    settings = process_settings.model_copy(update={"verification_purge_interval_seconds": 0.1})
    housekeeper = HousekeeperProcess(settings)
    housekeeper.start()
    try:
        deadline = time.monotonic() + 60
        while uploads["due"].exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        housekeeper.stop()
    assert not uploads["due"].exists() and uploads["kept"].exists()
    with Session(engine) as s:
        attempts = {a.upload_path: a for a in s.exec(select(VerificationAttempt)).all()}
    assert attempts[str(uploads["due"])].upload_deleted_at is not None
    assert attempts[str(uploads["kept"])].upload_deleted_at is None
    engine.dispose()


@pytest.mark.parametrize("audit_writer", ["process", "journal"])
def test_the_default_process_layout_serves_checks_end_to_end(process_settings, sqlite_url, audit_writer):
    """What `make run` starts (audit rows through the appender child, or the journal when asked
    for), the log through the housekeeper."""
    settings = process_settings.model_copy(update={"audit_writer": audit_writer})
    admin_key = bootstrap_admin(sqlite_url)
    with TestClient(create_app(settings)) as client:
        api = Api(client=client, settings=settings, admin_key=admin_key, keys={"root": admin_key})
        api.principal("plat", kind="platform")
        api.user_with_cameo("owner", audience="everyone")
        api.principal("fan")
        r = api.check("fan", ["owner"])
        assert r.status_code == 200 and r.json()["allowed"] and r.json()["receipt"]
        api.principal("auditor", kind="auditor")
        # Listed as soon as it is answered, though a journal's rows reach the table in bulk.
        events = api.call("GET", "/v1/audit/events", "auditor", params={"action": "consent.check"}).json()
        assert [e["reason"] for e in events["events"]] == ["audience_everyone"]
        log = client.app.state.runtime.log  # type: ignore[attr-defined]
        assert log._thread is None  # this process does not integrate
        deadline = time.monotonic() + 60
        status = 404
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.1)
            status = client.get("/v1/log/checkpoint").status_code
        assert status == 200  # signed by the housekeeper
        full_log_check(log)


def test_foreground_keeps_lock_holding_work_off_the_idle_thread():
    """Work handed to Foreground runs at the priority its creator had, even from a SCHED_IDLE thread."""
    seen: dict = {}

    def upkeep() -> None:  # a thread of its own: a thread cannot leave SCHED_IDLE once in it
        foreground = Foreground()
        try:
            _yield_to_requests()
            seen["caller"] = os.sched_getscheduler(0)
            seen["foreground"] = foreground(lambda: os.sched_getscheduler(0))
            try:
                foreground(lambda: 1 / 0)
            except ZeroDivisionError:
                seen["raised"] = True
        finally:
            foreground.close()

    thread = threading.Thread(target=upkeep)
    thread.start()
    thread.join()
    assert seen == {"caller": os.SCHED_IDLE, "foreground": os.SCHED_OTHER, "raised": True}


def test_integration_inserts_checkpoints_through_foreground(process_settings, sqlite_url):
    from consent_service.app import build_log

    engine = make_engine(sqlite_url)
    writer = AuditWriter(engine)
    writer.start()
    asyncio.run(writer.append(_checks(3)[0], revision=1))
    log = build_log(process_settings, engine)
    held: list[int] = []

    def foreground(fn):
        held.append(1)
        return fn()

    assert log.integrate(sign=False, foreground=foreground) is not None
    assert held == []  # nodes only: the tree's own file, no lock that requests wait on
    assert log.integrate(foreground=foreground) is not None
    assert held == [1]
    with Session(engine) as s:
        assert s.exec(select(func.max(LogCheckpoint.tree_size))).one() == 1
    writer.stop()
    log.close()
    engine.dispose()


def test_periodic_upkeep_outlives_a_failing_tick_and_stops_when_told():
    from consent_service.periodic import Periodic

    class Flaky(Periodic):
        def __init__(self):
            super().__init__(name="flaky", interval=0.01)
            self.ticks = 0

        def tick(self):
            self.ticks += 1
            if self.ticks == 1:
                raise RuntimeError("a bad moment")

    upkeep = Flaky()
    upkeep.start()
    deadline = time.monotonic() + 10
    while upkeep.ticks < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    upkeep.stop()
    assert upkeep.ticks >= 3
    stopped_at = upkeep.ticks
    time.sleep(0.05)
    assert upkeep.ticks == stopped_at and upkeep._thread is None
