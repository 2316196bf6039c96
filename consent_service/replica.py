"""Keeps this instance's in-memory consent replica in step with the database."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, text
from sqlmodel import Session, col

from consent_service.errors import StaleRevision
from consent_service.hugepages import CollapseReport, collapse_heap
from consent_service.models import (
    Block,
    Cameo,
    ConsentChange,
    Follow,
    LikenessGrant,
    Principal,
    PrincipalLike,
    utcnow,
)
from consent_service.services.changes import NOTIFY_CHANNEL
from policy.likeness import LikenessPolicy

log = logging.getLogger(__name__)


def cameo_op(cameo: Cameo, owner: PrincipalLike) -> dict[str, Any]:
    """The replica op that describes a cameo's current settings."""
    return {
        "op": "cameo",
        "owner": cameo.owner_id,
        "cameo": cameo.id,
        "state": str(cameo.state),
        "audience": str(cameo.audience),
        "birth_date": owner.birth_date.isoformat() if owner.birth_date else None,
        "banned_terms": list(cameo.banned_terms),
        "instructions": cameo.instructions,
    }


def grant_op(
    *, owner_id: str, grantee_id: str, purposes: list[str], expires_at: datetime | None
) -> dict[str, Any]:
    """The replica op that sets one person's grant."""
    return {
        "op": "grant",
        "owner": owner_id,
        "grantee": grantee_id,
        "purposes": list(purposes),
        "expires": expires_at.timestamp() if expires_at else None,
    }


def _snapshot_ops(session: Session) -> Iterator[dict[str, Any]]:
    cameos = select(Cameo, Principal).join(Principal, col(Cameo.owner_id) == col(Principal.id))
    for cameo, owner in session.execute(cameos):
        yield cameo_op(cameo, owner)
    # Plain columns, not ORM objects: at 1M grants, building entities triples the load time.
    grants = select(
        col(Cameo.owner_id),
        col(LikenessGrant.grantee_id),
        col(LikenessGrant.purposes),
        col(LikenessGrant.expires_at),
    ).join(Cameo, col(LikenessGrant.cameo_id) == col(Cameo.id))
    for owner_id, grantee_id, purposes, expires_at in session.execute(
        grants.execution_options(yield_per=10_000)
    ):
        yield grant_op(owner_id=owner_id, grantee_id=grantee_id, purposes=purposes, expires_at=expires_at)
    blocks = select(col(Block.blocked_id), col(Cameo.owner_id)).join(
        Cameo, col(Block.cameo_id) == col(Cameo.id)
    )
    for blocked_id, owner_id in session.execute(blocks.execution_options(yield_per=10_000)):
        yield {"op": "block", "owner": owner_id, "actor": blocked_id}
    follows = select(col(Follow.follower_id), col(Follow.followee_id))
    for follower, followee in session.execute(follows.execution_options(yield_per=10_000)):
        yield {"op": "follow", "follower": follower, "followee": followee}


class ConsentReplica:
    """Owns the LikenessPolicy of this process and replays `consent_change` into it."""

    def __init__(
        self,
        *,
        engine: Engine,
        policy: LikenessPolicy,
        poll_interval: float = 0.25,
        huge_pages_min_rules: int = 0,
    ) -> None:
        """`huge_pages_min_rules`: from this many rules loaded on, move the heap onto 2 MB pages
        (hugepages.py); 0: never."""
        self.engine = engine
        self._huge_pages_min_rules = huge_pages_min_rules
        self.huge_pages: CollapseReport | None = None
        self.policy = policy
        self._poll_interval = poll_interval
        self._catch_up_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Load a consistent snapshot of all consent state."""
        # A million rules are millions of tracked containers made in a row, and the collector's
        # passes over them while they load took most of a 1M load: 22.5 s with them, 5.8 s
        # without (13.6 and 6.8 s before the index's buckets were tuples; 2026-12-01). What
        # the load leaves behind is collected once, below.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._load_snapshot()
        finally:
            if collecting:
                gc.enable()
        # A million long-lived rules would make every full GC pass walk them all,
        # a pause of tens of milliseconds; freezing moves them out of its reach.
        gc.collect()
        gc.freeze()
        if 0 < self._huge_pages_min_rules <= self.policy.rule_count:
            self.huge_pages = collapse_heap()

    def _load_snapshot(self) -> None:
        with Session(self.engine) as session:
            if self.engine.dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            counter = text("SELECT value FROM revision_counter WHERE id = 1")
            revision = int(session.execute(counter).scalar_one())
            self.policy.bulk_load(revision=revision, ops=_snapshot_ops(session))
            # Receipts live at most 10 minutes; the last 15 minutes of changes tell which of
            # them lost their consent before this process started.
            recent = session.execute(
                select(col(ConsentChange.revision), col(ConsentChange.ops)).where(
                    col(ConsentChange.revision) <= revision,
                    col(ConsentChange.created_at) >= utcnow() - timedelta(minutes=15),
                )
            ).all()
            for rev, ops in recent:
                self.policy.note_history(rev, ops)
            session.rollback()

    def catch_up(self) -> int:
        """Replay every committed change newer than the replica; returns the replica revision."""
        query = (
            select(col(ConsentChange.revision), col(ConsentChange.ops))
            .where(col(ConsentChange.revision) > self.policy.revision)
            .order_by(col(ConsentChange.revision))
        )
        with self._catch_up_lock:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
                conn.rollback()
            for revision, ops in rows:
                self.policy.apply(revision, ops)
        return self.policy.revision

    def apply_own(self, revision: int, ops: list[dict[str, Any]]) -> int:
        """Apply a change this process just committed; replay from the log if others came first."""
        with self._catch_up_lock:
            if revision == self.policy.revision + 1:
                self.policy.apply(revision, ops)
                return revision
        return self.catch_up()

    def ensure_fresh(self, at_least: int | None) -> int:
        """Fail closed unless the replica is at `at_least` or later, catching up first if needed."""
        if at_least is not None and self.policy.revision < at_least:
            self.catch_up()
            if self.policy.revision < at_least:
                raise StaleRevision(
                    f"cannot answer at revision {at_least}; this instance is at {self.policy.revision}",
                    details={"requested": at_least, "available": self.policy.revision},
                )
        return self.policy.revision

    # -- background sync -------------------------------------------------
    def start(self) -> None:
        """Follow other instances' changes: PostgreSQL notifications, with polling as the floor."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="consent-replica-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.engine.dialect.name == "postgresql":
                    self._listen()
                else:
                    self._stop.wait(self._poll_interval)
                    self.catch_up()
            except Exception:
                # A dropped connection must not end syncing; the next loop retries.
                log.exception("consent replica sync failed; retrying")
                self._stop.wait(self._poll_interval)

    def _listen(self) -> None:
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"LISTEN {NOTIFY_CHANNEL}")
            raw = conn.connection.driver_connection
            assert raw is not None
            while not self._stop.is_set():
                # A notification is only a hint to look; the poll bounds the lag
                # even if one is lost, and the change log decides what applies.
                for _ in raw.notifies(timeout=self._poll_interval, stop_after=1):
                    pass
                self.catch_up()
