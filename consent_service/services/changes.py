"""Writing consent changes and audit events, in the caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, select, text
from sqlmodel import Session, col

from audit.entry import encode_entry
from consent_service.db import SQLITE_BUSY_TIMEOUT_MS, multi_row_inserts
from consent_service.models import AuditEvent, ConsentChange, WebhookDelivery, WebhookSubscription, utcnow

AUDIT_TABLE = AuditEvent.__table__  # type: ignore[attr-defined]
_CHANGES = ConsentChange.__table__  # type: ignore[attr-defined]

NOTIFY_CHANNEL = "consent_changes"


@dataclass(frozen=True)
class Event:
    """An audit event to be written alongside a change."""

    action: str
    actor_id: str | None
    subject_id: str | None = None
    decision: str | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def write_events(session: Session, events: list[Event], *, revision: int | None) -> None:
    """Insert audit rows that share one consent revision, in the open transaction."""
    write_event_groups(session, [(events, revision)])


def write_event_groups(session: Session | Connection, groups: list[tuple[list[Event], int | None]]) -> None:
    """Insert several requests' audit rows with one sequence reservation and one executemany.

    Append-only: there is no update path. No RETURNING, and one round trip for
    the sequence however many requests share the transaction, because the group
    writer's batches are the hottest write in the service.
    """
    count = sum(len(events) for events, _ in groups)
    if count == 0:
        return
    seq = reserve_sequence(session, count=count)
    session.execute(AUDIT_TABLE.insert(), audit_rows(groups, seq=seq, at=utcnow()))


def audit_rows(
    groups: list[tuple[list[Event], int | None]], *, seq: int, at: datetime | Sequence[datetime]
) -> list[dict[str, Any]]:
    """The audit_event rows for these groups, numbered from `seq`, each with its canonical entry.

    `at`: one time for every group, or one per group (rows from the audit journal keep the
    time of their decision, not of their commit).
    """
    times = [at] * len(groups) if isinstance(at, datetime) else at
    rows = []
    for (events, revision), when in zip(groups, times, strict=True):
        for e in events:
            fields: dict[str, Any] = {
                "at": when,
                "actor_id": e.actor_id,
                "subject_id": e.subject_id,
                "action": e.action,
                "decision": e.decision,
                "reason": e.reason,
                "revision": revision,
                "details": e.details,
            }
            rows.append({**fields, "seq": seq, "entry": encode_entry(seq=seq, **fields)})
            seq += 1
    return rows


class SqliteAuditAppender:
    """write_event_groups on one raw sqlite3 connection, for the audit writer on the event loop.

    The same statements and the same stored values (each column bound by its SQLAlchemy
    type's own processor), without the engine's per-statement machinery: SQLAlchemy's
    begin, execute and commit cost about a third of the event loop's CPU per consent check
    at 700 checks/s (py-spy). One multi-row INSERT per batch, because every sqlite3 call
    hands the GIL back and the loop must then win it again from any busy thread.

    The connection has no busy timeout: SQLite's busy handler sleeps 1, 2, 5, 10 ms and
    more between tries, so a 6 ms write elsewhere costs 8 ms of waiting, and on the event
    loop a sleep stalls every request. While another connection (the log integrator,
    the admin CLI, a second instance) holds the write lock, `write` raises WriterBusy
    at once and writes nothing, so the caller retries on its own schedule.

    It keeps the engine's backstop autocheckpoint: the WalCheckpointer starts the WAL
    over long before, so a commit here checkpoints only when the housekeeper is starved
    (it runs at SCHED_IDLE) or gone, and the WAL stays bounded even then.
    """

    def __init__(self, engine: Any) -> None:
        self._raw = engine.raw_connection()  # pooled, with the engine's pragmas applied
        self._db: Any = self._raw.driver_connection
        self._db.execute("PRAGMA busy_timeout=0")
        # A batch's INSERT keeps a statement journal, and past 64 KB SQLite spills it to a
        # temporary file, created and deleted in that commit: measured on a benchmark database,
        # every batch of 8 rows or more (their index entries land on pages all over the
        # indexes), which is every batch once the appender falls behind. In memory it holds
        # the pages one batch changes: about 1 MB for the child's batches of at most 100 rows.
        self._db.execute("PRAGMA temp_store=MEMORY")
        columns = [c for c in AUDIT_TABLE.columns if not c.primary_key]
        dialect = engine.dialect
        self._names = tuple(c.name for c in columns)
        self._binds = [c.type.dialect_impl(dialect).bind_processor(dialect) or _same for c in columns]

    @property
    def db(self) -> sqlite3.Connection:
        """The raw connection, for a caller's own statements inside `transaction()`."""
        return self._db

    def write(self, groups: list[tuple[list[Event], int | None]]) -> None:
        """Commit the groups' rows in one transaction, or roll back and raise."""
        if sum(len(events) for events, _ in groups) == 0:
            return
        with self.transaction():
            self.insert(groups, at=utcnow())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; WriterBusy if the lock is held."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise WriterBusy("another connection holds the SQLite write lock") from exc
            raise
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def insert(
        self, groups: list[tuple[list[Event], int | None]], *, at: datetime | Sequence[datetime]
    ) -> None:
        """The groups' rows, numbered on from the log counter, inside `transaction()`."""
        count = sum(len(events) for events, _ in groups)
        if count == 0:
            return
        end = self._db.execute(_BUMP_SQL, (count,)).fetchone()[0]
        bound = [
            [bind(row[name]) for name, bind in zip(self._names, self._binds, strict=True)]
            for row in audit_rows(groups, seq=end - count, at=at)
        ]
        for sql, params in multi_row_inserts(table=AUDIT_TABLE, columns=self._names, rows=bound):
            self._db.execute(sql, params)

    def close(self) -> None:
        # Back to the pool as it came.
        self._db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA temp_store=DEFAULT")
        self._raw.close()


class WriterBusy(Exception):
    """SQLite's write lock is held elsewhere; nothing was written, try again shortly."""


def _same(value: Any) -> Any:
    return value


_BUMP_SQL = "UPDATE log_counter SET next = next + ? WHERE id = 1 RETURNING next"
# Built once: building a statement costs more than SQLite takes to run it (a revocation runs all five).
_RESERVE = text(_BUMP_SQL.replace("?", ":n"))
_CURRENT_REVISION = text("SELECT value FROM revision_counter WHERE id = 1")
_NEXT_REVISION = text("UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value")
_NOTIFY = text("SELECT pg_notify(:channel, :rev)")
_ACTIVE_SUBSCRIPTIONS = select(col(WebhookSubscription.id), col(WebhookSubscription.events)).where(
    col(WebhookSubscription.active).is_(True)
)


def reserve_sequence(session: Session | Connection, *, count: int) -> int:
    """Reserve `count` dense log positions in this transaction; returns the first.

    The counter row stays locked until commit, so positions commit in order
    and a rolled-back transaction gives its positions back: no gaps.
    """
    end = int(session.execute(_RESERVE, {"n": count}).scalar_one())
    return end - count


def write_event(session: Session, event: Event, *, revision: int | None) -> None:
    """Insert one audit row in the open transaction."""
    write_events(session, [event], revision=revision)


def current_revision(session: Session) -> int:
    """The newest consent revision, for a request that changes nothing: inside a write transaction
    no change can commit before it returns, so a check at this revision sees the state it found."""
    return int(session.execute(_CURRENT_REVISION).scalar_one())


def record_change(session: Session, *, ops: list[dict[str, Any]], events: list[Event]) -> int:
    """Bump the consent revision, log the ops for replicas and write audit events; returns the revision.

    The UPDATE takes the counter's row lock until commit, so revisions commit in
    order and a replica replaying `consent_change` never sees a gap close late.
    """
    revision = int(session.execute(_NEXT_REVISION).scalar_one())
    # Through the table, not the ORM: a flush of one pending object cost more than the statement.
    session.execute(_CHANGES.insert(), {"revision": revision, "ops": ops, "created_at": utcnow()})
    write_events(session, events, revision=revision)
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at commit; other instances wake and replay at once.
        session.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "rev": str(revision)})
    return revision


class _Replica(Protocol):
    def apply_own(self, revision: int, ops: list[dict[str, Any]]) -> int: ...


def notify_platforms(session: Session, *, event: str, payload: dict[str, Any]) -> None:
    """Queue a webhook event for every subscribed platform in this transaction (an outbox)."""
    subs = session.execute(_ACTIVE_SUBSCRIPTIONS).all()
    for sub_id, wanted in subs:
        if event in wanted:
            body = {"event": event, "occurred_at": utcnow().isoformat(), **payload}
            session.add(WebhookDelivery(subscription_id=sub_id, event=event, payload=body))


def commit_change(
    session: Session,
    replica: _Replica,
    *,
    ops: list[dict[str, Any]],
    events: list[Event],
    revoked: dict[str, Any] | None = None,
) -> int:
    """Record, commit, and apply to this instance's replica so the very next check sees it.

    `revoked` describes a loss of consent; subscribed platforms get a
    consent.revoked webhook, queued in the same transaction.
    """
    revision = record_change(session, ops=ops, events=events)
    if revoked is not None:
        notify_platforms(session, event="consent.revoked", payload={**revoked, "consent_revision": revision})
    session.commit()
    replica.apply_own(revision, ops)
    return revision
