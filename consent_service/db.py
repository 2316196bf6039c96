"""Engine construction and schema migration; no engine exists until `make_engine` is called."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import URL, Connection, Engine, Table, event, make_url, text
from sqlmodel import Session, create_engine

from consent_service.periodic import Periodic

PACKAGE_DIR = Path(__file__).resolve().parent
AUTOCHECKPOINT_BACKSTOP_PAGES = 65_536  # above WalCheckpointer's restart_pages: never first
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A commit appends every page it changed to the WAL, whole, and the WAL checkpoints
# copy them back and fsync. An audit row for a consent check changes seven pages (the
# table, five indexes, the sequence counter), so at SQLite's default 4 KB a check cost
# 28 KB of WAL. Half-size pages halve that. Measured at 1,500 checks/s, median p99 of
# three runs, interleaved: 9.1 and 9.0 ms against 11.6 and 13.7 ms at 4 KB; in
# bench/consent_check.py, 13.1 against 20.2 ms in a busy hour, and 6.1 and 7.0 against
# 7.3 ms (within the noise) in a quiet one. 1 KB pages measured no better, and a
# check's row (about 760 bytes) is near their 990-byte limit before it spills into
# overflow pages. SQLite fixes the page size when it creates a file: an
# existing database keeps its own until a VACUUM.
SQLITE_PAGE_SIZE = 2048
# Execution option that opens a SQLite transaction with the write lock (see write_transaction).
WRITE_OPTION = "sqlite_write"
_writing = threading.local()
_WRITER_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


def make_engine(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    autocheckpoint_pages: int = AUTOCHECKPOINT_BACKSTOP_PAGES,
    **kwargs: Any,
) -> Engine:
    """Create an engine; SQLite gets WAL and a busy timeout so concurrent writers queue.

    SQLite `synchronous`: NORMAL survives a killed process (WAL), FULL also an
    operating-system crash or power loss, at the price of an fsync per commit.
    `autocheckpoint_pages`: the WAL size at which a commit checkpoints it itself;
    the default leaves that to a WalCheckpointer.
    """
    if sqlite_synchronous not in ("NORMAL", "FULL"):
        raise ValueError("sqlite_synchronous must be NORMAL or FULL")
    if url.startswith("sqlite"):
        _sqlite_file(url)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" hook below issue BEGIN itself.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before WAL mode writes the header
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            # Checkpoints fsync; a committing request should not pay for one. By default a
            # WalCheckpointer runs them in the background, and this is only the backstop.
            cur.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint_pages}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A deferred transaction that reads and then writes fails at once with
            # SQLITE_BUSY when another writer committed in between (the busy timeout
            # does not apply), so writers take the lock up front; readers do not.
            immediate = conn.get_execution_options().get(WRITE_OPTION)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        _WRITER_LOCKS[engine] = threading.Lock()
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, pool_pre_ping=True, **kwargs)


# Runs a callable that holds a lock requests wait on, and returns its result: where it runs is the
# caller's choice (housekeeping.Foreground: on a thread that is not at SCHED_IDLE).
LockHolder = Callable[[Callable[[], Any]], Any]


def hold_here(fn: Callable[[], Any]) -> Any:
    return fn()


class WalCheckpointer(Periodic):
    """Runs every SQLite WAL checkpoint off the request path, once a second, and bounds the WAL.

    Under a steady stream of commits a PASSIVE checkpoint never catches up with
    the writers, so SQLite never starts the WAL over and the file only grows
    (measured here: 10 MB a second at 400 checks/s). Left alone, SQLite's own
    autocheckpoint then runs inside some commit, an audit commit that requests
    wait for. Measured at 1,500 checks/s with SQLite's default of 1,000 pages: a
    checkpoint with three fdatasyncs on the loop every 2 s, 20-45 ms each, most
    of the p99 above 10 ms. Connections now autocheckpoint only at the backstop
    (AUTOCHECKPOINT_BACKSTOP_PAGES), which this checkpointer keeps the WAL below.

    So each round, once the WAL passes `restart_pages` (16 MB at SQLITE_PAGE_SIZE):
    1. a PASSIVE checkpoint copies the bulk with no lock held, and the database
       file is fdatasync'ed here, so the pages it copied are on disk already; a
       second such pass copies what was committed during the first, and the WAL
       is fdatasync'ed too, so the syncs inside step 2 have little left to do;
    2. then a second connection takes the write lock (BEGIN IMMEDIATE with a
       20 ms busy timeout: every writer of every process waits, the audit writer
       without blocking its event loop) while another PASSIVE checkpoint copies
       what was committed during step 1. Nothing is left in the WAL, so the next
       commit starts it over, with only its header to sync. Step 2 holds writers
       off for a few milliseconds, about once a second at 1,500 checks/s. A
       reader in another process can keep it from finishing; the next round
       tries again.

    The threshold was chosen by measurement, in pages: at 4 KB pages, 32,768
    pages instead of 8,192 gave a median p99 at 1,500 checks/s of 25 ms against
    10 ms (four runs each, interleaved; bench/consent_check.py's HTTP setup). At
    2 KB pages, 2,048, 4,096 and 16,384 were within the noise of 8,192.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float = 1.0,
        restart_pages: int = 8_192,
        foreground: LockHolder = hold_here,
    ) -> None:
        """`foreground` runs the locked pass, which every writer waits for."""
        super().__init__(name="sqlite-wal-checkpoint", interval=interval)
        self._engine = engine
        self._foreground = foreground
        self._restart_pages = restart_pages

    def start(self) -> None:
        if self._engine.dialect.name == "sqlite":  # PostgreSQL checkpoints itself
            super().start()

    def tick(self) -> bool:
        return self.checkpoint()

    def checkpoint(self) -> bool:
        """One round; True when the WAL was checkpointed to its end, to be started over."""
        raw, holder = self._engine.raw_connection(), self._engine.raw_connection()
        try:
            db: Any = raw.driver_connection
            frames = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if frames < self._restart_pages:
                return False
            path = db.execute("PRAGMA database_list").fetchone()[2]
            _fdatasync(path)
            # A second unlocked pass copies what was committed during the first. Then the WAL
            # is synced here too: inside the locked pass SQLite syncs the WAL before copying
            # and the database after, and with only the last moment's frames left to sync the
            # locked pass (every writer waiting) took 1.4 ms at the median and 3.0 at most,
            # against 5.3-9.0 ms (measured at 1,500 checks/s, 8 passes each way).
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            _fdatasync(path)
            _fdatasync(path + "-wal")
            done: bool = self._foreground(lambda: self._locked_pass(db, holder.driver_connection))
            return done
        finally:
            holder.close()
            raw.close()

    def _locked_pass(self, db: Any, hold: Any) -> bool:
        lock = writer_lock(self._engine)
        with lock if lock is not None else contextlib.nullcontext():
            hold.execute("PRAGMA busy_timeout=20")
            try:
                hold.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False  # a long write transaction elsewhere: try next round
            try:
                _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            finally:
                hold.execute("ROLLBACK")
                hold.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        return bool(frames == copied)


def _fdatasync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


@contextmanager
def write_transaction(session: Session) -> Iterator[None]:
    """Run the body as this session's one write transaction; the body commits.

    Writers run one at a time on both databases, so a service may check and then
    act (is this person already blocked? then add the block) without a race:
    - SQLite has one writer anyway; writers of this process queue on a lock here
      instead of in SQLite's sleep-and-retry busy handler, which adds milliseconds
      per wait.
    - PostgreSQL: the transaction first locks the consent revision counter's row,
      which every consent change updates before it commits anyway. Under READ
      COMMITTED each later statement then sees every write committed before it.
      Without it, concurrent identical requests each found nothing and each
      inserted: the losers hit a unique violation (a 500), and two revocations of
      one grant both reported success (tests/test_concurrency.py).
    Nested use joins the outer transaction.
    """
    if getattr(_writing, "active", False):
        yield
        return
    if session.in_transaction():
        session.commit()  # end a read transaction (e.g. authentication) before taking the lock
    bind = session.get_bind()
    lock = writer_lock(bind.engine) if isinstance(bind, Engine | Connection) else None
    _writing.active = True
    try:
        with lock if lock is not None else contextlib.nullcontext():
            if lock is not None:
                session.connection(execution_options={WRITE_OPTION: True})
            elif bind.dialect.name == "postgresql":
                session.execute(text(_PG_WRITER_LOCK))
            try:
                yield
            finally:
                if session.in_transaction():
                    session.rollback()
    finally:
        _writing.active = False


_PG_WRITER_LOCK = "SELECT value FROM revision_counter WHERE id = 1 FOR UPDATE"


def writer_lock(engine: Engine) -> threading.Lock | None:
    """The lock that this process's SQLite writers queue on (see write_transaction); None elsewhere."""
    return _WRITER_LOCKS.get(engine)


@contextmanager
def write_connection(engine: Engine, *, lock_held: bool = False) -> Iterator[Connection]:
    """A Core connection holding this engine's write transaction; the body commits.

    The same lock and BEGIN IMMEDIATE as write_transaction, without an ORM
    Session, for background writers whose every microsecond is on a request's
    path. `lock_held`: the caller already holds writer_lock(engine).
    """
    lock = None if lock_held else writer_lock(engine)
    with contextlib.ExitStack() as stack:
        if lock is not None:
            stack.enter_context(lock)
        conn = stack.enter_context(engine.connect().execution_options(**{WRITE_OPTION: True}))
        try:
            yield conn
        finally:
            if conn.in_transaction():
                conn.rollback()


def insert_values(
    conn: Connection, *, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT many rows with one multi-row VALUES statement per 1,000 rows.

    executemany steps once per row, and each step hands the GIL back and must
    win it again: behind a busy event loop, 2,000 rows took a quarter of a
    second, with the SQLite write lock held throughout. Values go to the driver
    as they are, so they must already be plain ints, strings and bytes.
    """
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for sql, params in multi_row_inserts(table=table, columns=columns, rows=rows, mark=mark):
        conn.exec_driver_sql(sql, params)


def multi_row_inserts(
    *, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]], mark: str = "?"
) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The statements of insert_values, each with its flattened parameters, for any DB-API cursor."""
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    # Identifiers come from the table's metadata (a KeyError for an unknown
    # column); every value is a bound parameter.
    names = ", ".join(table.c[c].name for c in columns)
    head = f"INSERT INTO {table.name} ({names}) VALUES "  # noqa: S608
    # At most 1,000 rows: a dozen columns stay far under SQLite's 32,766 bound parameters.
    for start in range(0, len(rows), 1000):
        chunk = rows[start : start + 1000]
        yield head + ", ".join([one] * len(chunk)), tuple(value for row in chunk for value in row)


P = ParamSpec("P")
R = TypeVar("R")


def writes(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a service whose first argument is the Session: it runs in write_transaction."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = args[0]
        assert isinstance(session, Session)
        with write_transaction(session):
            return fn(*args, **kwargs)

    return wrapper


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(PACKAGE_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(PACKAGE_DIR / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the database schema to the newest Alembic revision, one migrator at a time."""
    from alembic import command

    with _one_migrator(url):
        command.upgrade(alembic_config(url), "head")


def sqlite_database_file(url: str | URL) -> Path | None:
    """The file of a SQLite database (an engine's `.url`, or a URL string); None for an
    in-memory one or another database."""
    url = make_url(url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, its folder created; None for an in-memory database."""
    path = sqlite_database_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path


# Any constant will do, as long as nothing else in the database takes this advisory lock.
_MIGRATION_LOCK_KEY = 0x636F6E73656E74  # "consent"


@contextmanager
def _one_migrator(url: str) -> Iterator[None]:
    """Hold off other migrators of this database until the body is done.

    Every container runs `consent-admin migrate` before it serves (Dockerfile), so replicas
    started together migrate together. Each found the schema missing and created it: on
    PostgreSQL all but one failed on the enum types the first had made, and on SQLite on the
    write lock. The next migrator now waits, then finds the schema at head and does nothing.
    """
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        if path is None:
            yield
            return
        # A file of its own: closing any other descriptor of the database file would drop
        # the POSIX locks SQLite holds on it.
        with open(f"{path}.migrate-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()
