"""The SQLite default for consent checks' audit rows: a journal file, ingested in bulk by a child.

Real files, real flocks, a real spawned ingester over a real database; nothing is stubbed
but the one failing write(2) that a full disk would give.
"""

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, select

import consent_service.audit_writer as audit_writer_module
from audit.entry import encode_entry
from consent_service.audit_journal import (
    JournalCorrupt,
    JournalWriter,
    encode,
    forget_finished,
    ingest,
    journal_dir,
)
from consent_service.audit_writer import AuditWriter
from consent_service.db import make_engine
from consent_service.errors import AuditUnavailable
from consent_service.models import AuditEvent, AuditJournalProgress
from consent_service.receipts import ReceiptKeys
from consent_service.services.changes import Event, SqliteAuditAppender, WriterBusy

KEYS = ReceiptKeys(signing=Ed25519PrivateKey.generate())


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    shutil.copy(sqlite_template, tmp_path / "consent.db")
    return f"sqlite:///{tmp_path}/consent.db"


@pytest.fixture
def engine(sqlite_url):
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def appender(engine):
    appender = SqliteAuditAppender(engine)
    yield appender
    appender.close()


def _event(i: int, *, prefix: str = "a") -> Event:
    return Event(
        "consent.check",
        f"{prefix}{i}",
        f"s{i}",
        decision="allow",
        reason="granted",
        details={"check_id": f"c{i}"},
    )


def _rows(engine) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(s.exec(select(AuditEvent).order_by(AuditEvent.seq)).all())


def _progress(engine) -> dict[str, int]:
    with Session(engine) as s:
        return {p.name: p.consumed for p in s.exec(select(AuditJournalProgress)).all()}


def _journals(directory) -> list:
    return sorted(directory.glob("journal-*.jsonl")) if directory.exists() else []


def test_the_journal_lives_beside_a_sqlite_file_and_nowhere_else(engine, tmp_path):
    assert journal_dir(engine) == tmp_path / "consent.audit-journal"
    assert journal_dir(make_engine("sqlite://")) is None
    assert journal_dir(make_engine("postgresql+psycopg://u@127.0.0.1/db")) is None


def test_rows_reach_the_table_once_with_the_time_of_their_decision(engine, appender):
    directory = journal_dir(engine)
    writer = JournalWriter(directory)
    decided = [1_700_000_000.25 + i for i in range(3)]
    for i, at in enumerate(decided):
        writer.append(encode([_event(i)], revision=10 + i, at=at))
    writer.append(encode([_event(3, prefix="b"), _event(4, prefix="b")], revision=20, at=decided[0]))

    assert ingest(appender, directory) == 5
    assert ingest(appender, directory) == 0  # nothing twice
    rows = _rows(engine)
    assert [r.actor_id for r in rows] == ["a0", "a1", "a2", "b3", "b4"]
    assert [r.revision for r in rows] == [10, 11, 12, 20, 20]
    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + 5))
    for row, at in zip(rows, [*decided, decided[0], decided[0]], strict=True):
        when = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        assert when == datetime.fromtimestamp(at, UTC)
        assert row.entry == encode_entry(
            seq=row.seq,
            at=when,
            actor_id=row.actor_id,
            subject_id=row.subject_id,
            action=row.action,
            decision=row.decision,
            reason=row.reason,
            revision=row.revision,
            details=row.details,
        )
    # The writer still holds its file: it stays, with how much of it is in.
    [path] = _journals(directory)
    assert _progress(engine) == {path.name: path.stat().st_size}

    writer.close()  # final now: ingested to its end, then gone, its progress row too
    assert ingest(appender, directory) == 0
    assert _journals(directory) == [] and _progress(engine) == {}
    assert len(_rows(engine)) == 5


def test_a_record_is_taken_only_whole(engine, appender):
    directory = journal_dir(engine)
    writer = JournalWriter(directory)
    writer.append(encode([_event(0)], revision=1, at=time.time()))
    [path] = _journals(directory)
    line = encode([_event(1)], revision=1, at=time.time())
    with path.open("ab") as f:  # a write under way, seen half done
        f.write(line[:30])
    assert ingest(appender, directory) == 1
    with path.open("ab") as f:
        f.write(line[30:])
    assert ingest(appender, directory) == 1
    assert [r.actor_id for r in _rows(engine)] == ["a0", "a1"]

    # A writer that died inside a write leaves a torn tail in a final file: dropped, with a warning.
    with path.open("ab") as f:
        f.write(encode([_event(2)], revision=1, at=time.time())[:25])
    writer.close()
    assert ingest(appender, directory) == 0
    assert _journals(directory) == [] and _progress(engine) == {}
    assert [r.actor_id for r in _rows(engine)] == ["a0", "a1"]


def test_rotated_files_are_ingested_in_order_and_removed(engine, appender):
    directory = journal_dir(engine)
    writer = JournalWriter(directory, rotate_bytes=200)
    for i in range(12):
        writer.append(encode([_event(i)], revision=i, at=time.time()))
    files = _journals(directory)
    assert len(files) > 3
    assert ingest(appender, directory, max_rows=2) == 12  # many small transactions, in file order
    assert [r.actor_id for r in _rows(engine)] == [f"a{i}" for i in range(12)]
    assert len(_journals(directory)) == 1  # only the one still held


def test_a_failed_write_leaves_no_torn_record(engine, appender, monkeypatch):
    directory = journal_dir(engine)
    writer = JournalWriter(directory)
    writer.append(encode([_event(0)], revision=1, at=time.time()))
    real_write = os.write

    def disk_full_halfway(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full_halfway)
    with pytest.raises(OSError, match="No space"):
        writer.append(encode([_event(1)], revision=1, at=time.time()))
    monkeypatch.setattr(os, "write", real_write)
    writer.append(encode([_event(2)], revision=1, at=time.time()))
    assert ingest(appender, directory) == 2
    assert [r.actor_id for r in _rows(engine)] == ["a0", "a2"]


def test_something_that_is_not_a_record_stops_ingestion_of_its_batch(engine, appender):
    directory = journal_dir(engine)
    writer = JournalWriter(directory)
    writer.append(encode([_event(0)], revision=1, at=time.time()))
    writer.append(b'{"not": "a record"}\n')
    with pytest.raises(JournalCorrupt):
        ingest(appender, directory)
    assert _rows(engine) == [] and _progress(engine) == {}  # the batch's good row waits with it


def test_ingesters_racing_over_one_directory_move_each_row_once(engine, sqlite_url):
    """Several API processes on one database each run an ingester over all the files."""
    directory = journal_dir(engine)
    writers = [JournalWriter(directory, rotate_bytes=4_000) for _ in range(2)]
    for i in range(300):
        writers[i % 2].append(encode([_event(i)], revision=1, at=time.time()))
    for w in writers:
        w.close()

    errors: list[BaseException] = []

    def run() -> None:
        appender = SqliteAuditAppender(make_engine(sqlite_url))
        try:
            while _journals(directory):
                try:
                    ingest(appender, directory, max_rows=7)
                except WriterBusy:
                    time.sleep(0.001)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            appender.close()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    actors = [r.actor_id for r in _rows(engine)]
    assert sorted(actors) == sorted(f"a{i}" for i in range(300))
    # A progress row whose file another ingester deleted goes in a later pass, never before.
    appender = SqliteAuditAppender(engine)
    try:
        assert ingest(appender, directory) == 0
    finally:
        appender.close()
    assert _progress(engine) == {}


def test_a_journal_left_by_a_dead_process_is_taken_in(engine, appender, sqlite_url):
    directory = journal_dir(engine)
    code = (
        "import sys, os, time\n"
        "from pathlib import Path\n"
        "from consent_service.audit_journal import JournalWriter, encode\n"
        "from consent_service.services.changes import Event\n"
        "w = JournalWriter(Path(sys.argv[1]))\n"
        "for i in range(5):\n"
        "    w.append(encode([Event('consent.check', f'dead{i}', 's')], revision=1, at=time.time()))\n"
        "os._exit(0)  # no close, no clean stop\n"
    )
    subprocess.run([sys.executable, "-c", code, str(directory)], check=True, timeout=60)
    assert len(_journals(directory)) == 1
    assert ingest(appender, directory) == 5
    assert _journals(directory) == []
    assert [r.actor_id for r in _rows(engine)] == [f"dead{i}" for i in range(5)]


def test_progress_rows_of_finished_files_are_forgotten(engine, appender):
    directory = journal_dir(engine)
    directory.mkdir()
    (directory / "journal-live.jsonl").write_bytes(b"")
    with appender.transaction():
        for name in ("journal-gone.jsonl", "journal-live.jsonl"):
            appender.db.execute("INSERT INTO audit_journal (name, consumed) VALUES (?, 0)", (name,))
    forget_finished(appender, directory)
    assert _progress(engine) == {"journal-live.jsonl": 0}


def _journal_writer(url: str, **kw) -> AuditWriter:
    writer = AuditWriter(make_engine(url), offload="journal", **kw)
    assert writer._journal is not None and writer._child is None
    return writer


def test_the_writer_answers_from_the_journal_and_flush_waits_for_the_table(sqlite_url):
    writer = _journal_writer(sqlite_url, keys=KEYS)
    writer.start()
    engine = writer._engine
    try:

        async def checks() -> list:
            claims = [{"jti": f"c{i}", "exp": int(time.time()) + 600} for i in range(20)]
            return await asyncio.gather(
                *(writer.append([_event(i)], revision=4, receipt=c) for i, c in enumerate(claims))
            )

        receipts = asyncio.run(checks())
        assert [KEYS.verify(r, now=time.time())["jti"] for r in receipts] == [f"c{i}" for i in range(20)]
        writer.flush()
        assert sorted(r.actor_id for r in _rows(engine)) == sorted(f"a{i}" for i in range(20))
        assert writer._ingester is not None and writer._ingester.pid != os.getpid()
    finally:
        writer.stop()
    # A clean stop takes every record in and leaves no journal behind.
    assert _journals(journal_dir(engine)) == [] and _progress(engine) == {}


def test_the_writer_refuses_checks_while_rows_lag_and_recovers(sqlite_url, monkeypatch):
    monkeypatch.setattr(audit_writer_module, "MAX_LAG_SECONDS", 0.5)
    writer = _journal_writer(sqlite_url)
    writer.start()
    try:
        writer.flush(timeout=60)  # the child is up
        pid = writer._ingester.pid
        os.kill(pid, signal.SIGSTOP)  # ingestion stops; records wait in the journal
        try:
            asyncio.run(writer.append([_event(0)], revision=1))
            time.sleep(0.8)
            with pytest.raises(AuditUnavailable, match="behind"):
                asyncio.run(writer.append([_event(1)], revision=1))
            with pytest.raises(AuditUnavailable, match="did not reach"):
                writer.flush(timeout=0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
        writer.flush(timeout=60)
        asyncio.run(writer.append([_event(2)], revision=1))
        writer.flush(timeout=60)
        assert [r.actor_id for r in _rows(writer._engine)] == ["a0", "a2"]
    finally:
        writer.stop()


def test_a_dead_ingester_is_replaced_and_nothing_it_left_is_lost(sqlite_url):
    writer = _journal_writer(sqlite_url)
    writer.start()
    try:
        writer.flush(timeout=60)
        first = writer._ingester.pid
        os.kill(first, signal.SIGSTOP)
        asyncio.run(writer.append([_event(0)], revision=1))
        os.kill(first, signal.SIGKILL)
        time.sleep(1.1)  # past the liveness interval
        asyncio.run(writer.append([_event(1)], revision=1))
        assert writer._ingester.pid not in (None, first)
        writer.flush(timeout=60)
        assert [r.actor_id for r in _rows(writer._engine)] == ["a0", "a1"]
    finally:
        writer.stop()


def test_a_journal_write_that_fails_refuses_the_check(sqlite_url, monkeypatch):
    writer = _journal_writer(sqlite_url, keys=KEYS)
    writer.start()
    try:
        monkeypatch.setattr(
            os,
            "write",
            lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
        )
        with pytest.raises(AuditUnavailable, match="could not be written"):
            asyncio.run(writer.append([_event(0)], revision=1, receipt={"jti": "x"}))
    finally:
        monkeypatch.undo()
        writer.stop()
    assert _rows(writer._engine) == []


def test_where_commits_fsync_rows_are_committed_before_answering_instead(db_url):
    """PostgreSQL, or SQLite at synchronous=FULL: a journal without fsync would be less durable."""
    writer = AuditWriter(make_engine(db_url, sqlite_synchronous="FULL"), offload="journal")
    assert writer._journal is None
    writer.start()
    try:
        asyncio.run(writer.append([_event(0, prefix="pg")], revision=1))
        assert "pg0" in [r.actor_id for r in _rows(writer._engine)]  # in the table when it answered
    finally:
        writer.stop()


def test_journal_lines_are_plain_json(engine):
    line = encode([_event(7)], revision=3, at=12.5)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == [12.5, 3, "consent.check", "a7", "s7", "allow", "granted", {"check_id": "c7"}]
