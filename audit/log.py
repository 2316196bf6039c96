"""The database-backed transparency log: integrate sequenced audit rows, sign checkpoints, serve proofs.

Appending happens in the writers' own transactions (consent_service.services.changes
reserves a dense `seq` per row). This module only reads those rows, so
appending, integrating, reading and verifying stay separate.

The entries and the signed checkpoints are the record. The Merkle tree's nodes
are derived from the entries, and beside a SQLite database they live in a file
of their own (`consent.tree.db` next to `consent.db`): SQLite has one writer
per file, and inserting a second's worth of nodes held that lock for 2-10 ms,
during which every consent check's audit commit waited. In a file of their own
they take only the tree's lock. On PostgreSQL, with row locks, they stay in the
database. A lost or deleted tree file is rebuilt from the entries one checkpoint
at a time, each step stored only once it hashes to the checkpoint it ends on, and
nothing new is signed before the last one is reached.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, Engine, and_, func, insert, or_, select, text
from sqlmodel import Session, col

from audit import tree
from audit.notes import CosignatureInvalid, NoteSigner, WitnessKey, checkpoint_body
from consent_service.db import (
    LockHolder,
    hold_here,
    insert_values,
    make_engine,
    sqlite_database_file,
    write_connection,
    write_transaction,
)
from consent_service.errors import CheckpointNotFound, CosignatureRejected, LogRequestInvalid, LogTreeBehind
from consent_service.models import AuditEvent, LogCheckpoint, LogCosignature, LogNode, utcnow

log = logging.getLogger(__name__)
_ADVISORY_KEY = 0x6C6F67  # one integrator at a time across instances sharing PostgreSQL
_BLOCK = 4096
_STEPS_PER_CHECKPOINT = 5
_RACE_RETRIES = 20
# SQLite's default: the tree file checkpoints inside the integrator's own commits,
# which wait for nobody's request.
_TREE_AUTOCHECKPOINT_PAGES = 1000


class _Lost:
    """Another integrator changed the tree while this one was working."""


_LOST = _Lost()


class Waitable(Protocol):
    """A threading or multiprocessing Event."""

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str  # the signed note, with any witness cosignatures appended


def _fetch(session: Session, coords: set[tree.Coord]) -> dict[tree.Coord, bytes]:
    if not coords:
        return {}
    by_level: dict[int, list[int]] = {}
    for level, idx in coords:
        by_level.setdefault(level, []).append(idx)
    # One indexed probe per level; a row-value IN over (level, idx) makes SQLite scan the table.
    where = or_(*(and_(col(LogNode.level) == lv, col(LogNode.idx).in_(ids)) for lv, ids in by_level.items()))
    rows = session.execute(select(col(LogNode.level), col(LogNode.idx), col(LogNode.hash)).where(where)).all()
    return {(level, idx): bytes(h) for level, idx, h in rows}


def tree_engine_for(engine: Engine) -> Engine:
    """Where the tree's nodes live: a SQLite file beside a SQLite database, else the database itself."""
    path = sqlite_database_file(engine.url)
    if path is None:
        return engine
    nodes = make_engine(
        f"sqlite:///{path.with_name(f'{path.stem}.tree{path.suffix}').as_posix()}",
        autocheckpoint_pages=_TREE_AUTOCHECKPOINT_PAGES,
    )
    # A derived file, rebuilt from the entries when missing; it has no migrations of its own.
    LogNode.__table__.create(nodes, checkfirst=True)  # type: ignore[attr-defined]
    return nodes


def _frontier(nodes: Session, size: int) -> tree.Frontier:
    """The stored tree's right edge, to append to."""
    return tree.Frontier(size, _fetch(nodes, set(tree.Frontier.coords(size))))


def _getter(nodes: dict[tree.Coord, bytes]) -> tree.NodeGetter:
    def get(level: int, idx: int) -> bytes:
        try:
            return nodes[(level, idx)]
        except KeyError:
            raise RuntimeError(f"log node ({level}, {idx}) is missing: the tree is incomplete") from None

    return get


class _BlockGetter:
    """Node reads for bulk work (exports): fetches aligned blocks of one level at a time."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._blocks: dict[tuple[int, int], dict[int, bytes]] = {}

    def __call__(self, level: int, idx: int) -> bytes:
        key = (level, idx // _BLOCK)
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) > 256:
                self._blocks.clear()
            lo = key[1] * _BLOCK
            rows = self._session.execute(
                select(col(LogNode.idx), col(LogNode.hash)).where(
                    col(LogNode.level) == level, col(LogNode.idx) >= lo, col(LogNode.idx) < lo + _BLOCK
                )
            ).all()
            block = self._blocks[key] = {i: bytes(h) for i, h in rows}
        return block[idx]


class TransparencyLog:
    """Integrates the audit rows into an RFC 6962 tree and answers proofs and checkpoints."""

    def __init__(self, engine: Engine, *, signer: NoteSigner, witnesses: tuple[WitnessKey, ...] = ()) -> None:
        self.engine = engine
        self.tree_engine = tree_engine_for(engine)
        self.signer = signer
        self.origin = signer.name
        self._witnesses = {w.name: w for w in witnesses}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- integration -----------------------------------------------------
    def integrate(
        self, *, max_leaves: int = 100_000, sign: bool = True, foreground: LockHolder = hold_here
    ) -> int | None:
        """Add newly committed entries to the tree, and sign a checkpoint; returns the new size.

        None means there was nothing to do. Reading, hashing and signing happen
        before the write transaction: on SQLite there is one writer at a time, the
        audit writer that each consent check waits for included, so the lock is
        held only to insert the finished nodes and checkpoint. `sign=False` adds
        the nodes only; a later call signs a checkpoint over everything integrated
        by then, new entries or not. When another integrator (a thread, another
        instance) changed the tree meanwhile, the work is redone on its tree.
        `foreground` runs the step that holds the database's write lock (see
        consent_service/housekeeping.py); the tree's own file is written here.
        """
        for _ in range(_RACE_RETRIES):
            result = self._integrate_once(max_leaves=max_leaves, sign=sign, foreground=foreground)
            if not isinstance(result, _Lost):
                return result
            time.sleep(0.01)
        return None

    def _integrate_once(self, *, max_leaves: int, sign: bool, foreground: LockHolder) -> int | _Lost | None:
        with Session(self.engine) as session, Session(self.tree_engine) as nodes:
            size = self._integrated_size(nodes)
            published = self._published_size(session)
            if size < published:
                # The tree lost nodes that checkpoints cover (a deleted tree file).
                target = session.execute(
                    select(func.min(LogCheckpoint.tree_size)).where(col(LogCheckpoint.tree_size) > size)
                ).scalar_one()
                return self._rebuild_step(_frontier(nodes, size), target=int(target), chunk=max_leaves)
            entries = self._entries(session, start=size, limit=max_leaves)
            if not entries and not (sign and size > published):
                return None
            frontier = _frontier(nodes, size)
            self._check_extends(session, nodes, published)
        created = frontier.append(entries)
        new_size, new_root = frontier.size, frontier.root()
        note = self.signer.sign(checkpoint_body(self.origin, new_size, new_root)) if sign else None
        # The nodes commit first and the checkpoint after, each under its own file's write
        # lock: a checkpoint is never stored over nodes that are not, and nodes stored
        # without one are what `sign=False` leaves anyway.
        with self._tree_writer(size) as conn:
            if conn is None:
                return _LOST
            insert_values(conn, table=LogNode.__table__, columns=("level", "idx", "hash"), rows=created)  # type: ignore[attr-defined]
            conn.commit()
        if note is None:
            return new_size

        def publish() -> int | _Lost:
            with write_connection(self.engine) as conn:
                if self._published_size(conn) != published:
                    return _LOST  # another integrator signed meanwhile; sign again over its tree
                conn.execute(
                    insert(LogCheckpoint),
                    {"tree_size": new_size, "root_hash": new_root, "note": note, "created_at": utcnow()},
                )
                conn.commit()
            return new_size

        result: int | _Lost = foreground(publish)
        return result

    def _rebuild_step(self, frontier: tree.Frontier, *, target: int, chunk: int) -> int | _Lost:
        """Rebuild the nodes up to checkpoint `target`, unsigned, `chunk` entries at a time.

        One step per checkpoint, whatever its size: the chunks go into one transaction
        on the tree's file, which commits only once the step's root equals the
        checkpoint's. So no proof is ever served from nodes that no signed root vouches
        for, and memory stays bounded by `chunk` even for a first checkpoint over
        millions of entries.
        """
        with self._tree_writer(frontier.size) as conn:
            if conn is None:
                return _LOST
            while frontier.size < target:
                with Session(self.engine) as session:
                    entries = self._entries(
                        session, start=frontier.size, limit=min(chunk, target - frontier.size)
                    )
                if not entries:
                    raise RuntimeError(
                        f"refusing to rebuild: entry {frontier.size} of checkpoint {target} is gone"
                    )
                created = frontier.append(entries)
                insert_values(conn, table=LogNode.__table__, columns=("level", "idx", "hash"), rows=created)  # type: ignore[attr-defined]
            self._check_rebuilt(target, frontier.root())
            conn.commit()
        return target

    @contextmanager
    def _tree_writer(self, size: int) -> Iterator[Connection | None]:
        """The tree's write transaction, or None when another integrator moved the tree past `size`."""
        with write_connection(self.tree_engine) as conn:
            if self.tree_engine.dialect.name == "postgresql":
                got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
                if not got.scalar_one():
                    yield None  # another integrator is writing right now
                    return
            yield None if self._integrated_size(conn) != size else conn

    @staticmethod
    def _entries(session: Session, *, start: int, limit: int) -> list[bytes]:
        """Up to `limit` committed entries from position `start` on, stopping at the first gap."""
        rows = session.execute(
            select(col(AuditEvent.seq), col(AuditEvent.entry))
            .where(col(AuditEvent.seq) >= start)
            .order_by(col(AuditEvent.seq))
            .limit(limit)
        ).all()
        entries = []
        for expected, (seq, entry) in enumerate(rows, start=start):
            if seq != expected:
                break  # a gap cannot commit before what precedes it; stop and retry later
            entries.append(entry.encode())
        return entries

    def _integrated_size(self, nodes: Session | Connection) -> int:
        """Leaves in the stored tree: the published size, or more when nodes went in unsigned."""
        last = nodes.execute(select(func.max(col(LogNode.idx))).where(col(LogNode.level) == 0)).scalar_one()
        return 0 if last is None else int(last) + 1

    def _check_extends(self, session: Session, nodes: Session, previous: int) -> None:
        """Never sign a tree that does not contain the last signed one."""
        if previous == 0:
            return
        stored = session.get(LogCheckpoint, previous)
        found = _fetch(nodes, tree.needed_nodes(lambda g: tree.root(previous, g)))
        if stored is None or tree.root(previous, _getter(found)) != bytes(stored.root_hash):
            raise RuntimeError(f"refusing to sign: the tree no longer contains checkpoint {previous}")

    def _check_rebuilt(self, size: int, root: bytes) -> None:
        """A rebuilt step is stored only when its entries still hash to the checkpoint signed over them."""
        with Session(self.engine) as session:
            stored = session.get(LogCheckpoint, size)
        if stored is None or bytes(stored.root_hash) != root:
            raise RuntimeError(f"refusing to rebuild: the entries no longer hash to checkpoint {size}")

    def start(self, *, interval: float = 1.0) -> None:
        """Integrate and publish a checkpoint every `interval` seconds in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run,
            kwargs={"interval": interval, "stop": self._stop},
            name="audit-log-integrator",
            daemon=True,
        )
        self._thread.start()

    def run(
        self,
        *,
        interval: float,
        stop: Waitable,
        alive: Callable[[], bool] = lambda: True,
        foreground: LockHolder = hold_here,
    ) -> None:
        """Sign a checkpoint every `interval` seconds until `stop` is set or `alive()` turns false.

        Between checkpoints, new entries go into the tree in smaller steps: one step
        per second at 1,500 checks/s inserted about 3,000 nodes and held SQLite's
        write lock 6-11 ms, long enough to show in the consent checks' p99.
        """
        step = interval / _STEPS_PER_CHECKPOINT
        signed_at = time.monotonic()
        while not stop.wait(step) and alive():
            due = time.monotonic() - signed_at >= interval - step / 2
            try:
                self.integrate(sign=due, foreground=foreground)
            except Exception:
                log.exception("log integration failed; retrying")
            if due:
                signed_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def close(self) -> None:
        """Stop integrating and close the tree's own connections, when it has any."""
        self.stop()
        if self.tree_engine is not self.engine:
            self.tree_engine.dispose()

    # -- reading -----------------------------------------------------------
    def checkpoint(self, size: int | None = None) -> StoredCheckpoint:
        """The latest checkpoint, or the one of a given size, with witness cosignatures appended."""
        with Session(self.engine) as session:
            if size is None:
                size = session.execute(select(func.max(LogCheckpoint.tree_size))).scalar_one()
            row = session.get(LogCheckpoint, size) if size is not None else None
            if row is None:
                raise CheckpointNotFound(
                    "no checkpoint of that size" if size else "the log has no checkpoint yet"
                )
            cosigs = session.execute(
                select(col(LogCosignature.witness), col(LogCosignature.line))
                .where(col(LogCosignature.tree_size) == row.tree_size)
                .order_by(col(LogCosignature.witness))
            ).all()
            note = row.note + "".join(f"{line}\n" for _, line in cosigs)
            return StoredCheckpoint(size=row.tree_size, root=bytes(row.root_hash), note=note)

    def entries(self, *, start: int, end: int) -> list[tuple[int, str]]:
        """Canonical entries with seq in [start, end), integrated or not."""
        if not 0 <= start <= end or end - start > 10_000:
            raise LogRequestInvalid("need 0 <= start <= end and at most 10,000 entries")
        with Session(self.engine) as session:
            rows = session.execute(
                select(col(AuditEvent.seq), col(AuditEvent.entry))
                .where(col(AuditEvent.seq) >= start, col(AuditEvent.seq) < end)
                .order_by(col(AuditEvent.seq))
            ).all()
        return [(int(s), e) for s, e in rows]

    def _published_size(self, session: Session | Connection) -> int:
        return int(session.execute(select(func.coalesce(func.max(LogCheckpoint.tree_size), 0))).scalar_one())

    def inclusion_proof(self, *, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry `index` in the tree of `size` entries."""
        with Session(self.engine) as session:
            if not 0 <= index < size <= self._published_size(session):
                raise LogRequestInvalid("need 0 <= index < tree_size <= the latest checkpoint's size")
        with self._tree_of(size) as nodes:
            found = _fetch(nodes, tree.needed_nodes(lambda g: tree.inclusion_proof(index, size, g)))
        return tree.inclusion_proof(index, size, _getter(found))

    def consistency_proof(self, *, first: int, second: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        with Session(self.engine) as session:
            if not 0 < first <= second <= self._published_size(session):
                raise LogRequestInvalid("need 0 < first <= second <= the latest checkpoint's size")
        with self._tree_of(second) as nodes:
            found = _fetch(nodes, tree.needed_nodes(lambda g: tree.consistency_proof(first, second, g)))
        return tree.consistency_proof(first, second, _getter(found))

    @contextmanager
    def _tree_of(self, size: int) -> Iterator[Session]:
        """A read of the tree's nodes, which must cover `size` leaves (they do, but while rebuilding)."""
        with Session(self.tree_engine) as nodes:
            if self._integrated_size(nodes) < size:
                raise LogTreeBehind("the log's tree is being rebuilt; try again shortly")
            yield nodes

    def export(self, *, size: int | None = None) -> Iterator[str]:
        """NDJSON: the signed checkpoint, then every entry below its size with an inclusion proof."""
        cp = self.checkpoint(size)
        with Session(self.engine) as session, self._tree_of(cp.size) as nodes:
            yield json.dumps({"type": "checkpoint", "size": cp.size, "note": cp.note}) + "\n"
            get = _BlockGetter(nodes)
            for start in range(0, cp.size, 5000):
                rows = session.execute(
                    select(col(AuditEvent.seq), col(AuditEvent.entry))
                    .where(col(AuditEvent.seq) >= start, col(AuditEvent.seq) < min(start + 5000, cp.size))
                    .order_by(col(AuditEvent.seq))
                ).all()
                for seq, entry in rows:
                    proof = [base64.b64encode(h).decode() for h in tree.inclusion_proof(seq, cp.size, get)]
                    yield json.dumps({"type": "entry", "index": seq, "entry": entry, "proof": proof}) + "\n"

    # -- witnesses -----------------------------------------------------------
    def add_cosignature(self, *, size: int, line: str) -> str:
        """Store a known witness's verified cosignature on a checkpoint; returns the witness name."""
        cp = self.checkpoint(size)
        name = line.removeprefix("\u2014 ").rpartition(" ")[0]
        witness = self._witnesses.get(name)
        if witness is None:
            raise CosignatureRejected(f"unknown witness {name!r}")
        body = checkpoint_body(self.origin, cp.size, cp.root)
        try:
            witness.verify(line, body)
        except CosignatureInvalid as exc:
            raise CosignatureRejected(str(exc)) from exc
        with Session(self.engine) as session, write_transaction(session):
            if session.get(LogCosignature, (size, name)) is None:
                session.add(LogCosignature(tree_size=size, witness=name, line=line.strip()))
            session.commit()
        return name
