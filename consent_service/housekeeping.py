"""Upkeep in a process of its own: log integration, SQLite WAL checkpoints, expired upload deletion.

Integrating the transparency log is Python CPU work: reading the new rows,
hashing a leaf and about one interior node per entry, signing. At 1,500
consent checks a second that is 25-40 ms of CPU a second (measured here), and
in an API process each of those milliseconds is taken from the event loop
through the GIL: p99 at 1,500 checks/s was 18 ms with the integrator paused
and 33-39 ms with it running as a thread. WAL checkpoints wait on fdatasync.
Here both run next to the API processes instead of inside them.

One housekeeper works per data directory: every API process (uvicorn
--workers) starts one, they take turns on a file lock, and the others stand by
to take over when the holder's process ends. The API processes keep their
TransparencyLog for reading, proofs and cosignatures; the two sides meet only
in the database, where integration is safe against a concurrent integrator
anyway (a PostgreSQL advisory lock; SQLite's write lock and a size check), so
several machines on one PostgreSQL need no shared lock file.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consent_service.db import LockHolder
from consent_service.periodic import Periodic
from consent_service.settings import Settings

log = logging.getLogger(__name__)

_STANDBY_SECONDS = 1.0
# Upkeep can wait; the event loop answering checks cannot. At niceness 10 (against 0: median
# p99 at 1,500 checks/s 6.1 against 7.9 ms) the integrator's CPU bursts still slowed checks:
# with the tree in its own file no audit commit waits for it any more, yet 72 of the 120
# slowest checks of a traced run fell inside its steps. SCHED_IDLE runs it only on CPU time
# that nothing else wants, and any other task's wakeup preempts it. Median p99 in four
# interleaved comparisons (bench/results/http_ab.json): 9.3 -> 7.0 and 19.8 -> 11.1 ms; 13.7
# -> 13.6 and 10.8 -> 16.3 ms in two with a since-fixed appender bug on both sides. A machine
# kept fully busy starves it; integration then waits, and the WAL stays bounded by the
# backstop autocheckpoint of every connection (AUTOCHECKPOINT_BACKSTOP_PAGES). Where there
# is no SCHED_IDLE, niceness 10.
_FALLBACK_NICENESS = 10


class Foreground:
    """One thread at the priority its creator had, for the moments upkeep holds SQLite's write lock.

    Everything else in the housekeeper runs at SCHED_IDLE, and on a machine kept busy an
    idle thread may not run for seconds. One that held the write lock then (the WAL
    checkpoint's locked pass, a checkpoint row's insert) stalled every consent check behind
    it: with a neighbour busy-looping on one core and audit rows committed on the event
    loop, p50 went from 1.2 ms to 330 ms and p99 to 1.8 s at 1,500 checks/s. So those
    moments run here. An unprivileged thread cannot leave SCHED_IDLE once in it, so this
    thread is started before the others go idle.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="housekeeper-foreground")
        self._pool.submit(lambda: None).result()  # its thread exists now, at this thread's priority

    def __call__(self, fn: Callable[[], Any]) -> Any:
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown()


class UploadPurger(Periodic):
    """Deletes raw verification uploads kept past their time (CONSENT_VERIFICATION_RETAIN_UPLOADS_SECONDS).

    The published retention schedule promises it; until this ran, an upload kept for an hour
    was kept for good. It runs beside the other upkeep, one per data directory, where the
    uploads are. `foreground` runs each pass: it holds the database's write lock.
    """

    def __init__(self, engine: Any, *, interval: float, foreground: LockHolder) -> None:
        super().__init__(name="upload-purger", interval=interval)
        self._engine = engine
        self._foreground = foreground

    def tick(self) -> int:
        return self.purge()

    def purge(self) -> int:
        """One pass; how many uploads were deleted."""
        from sqlmodel import Session

        from consent_service.services.verification import purge_expired_uploads

        def one_pass() -> int:
            with Session(self._engine) as session:
                return purge_expired_uploads(session)

        deleted: int = self._foreground(one_pass)
        return deleted


class HousekeeperProcess:
    """Starts and stops the child process that integrates the log and checkpoints SQLite."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads running
        self._stop: Any = None
        self._process: Any = None

    def start(self) -> None:
        self._stop = self._ctx.Event()
        self._process = self._ctx.Process(
            target=run,
            kwargs={"settings": self._settings, "stop": self._stop, "parent": os.getpid()},
            name="consent-housekeeper",
            daemon=True,
        )
        self._process.start()

    def stop(self) -> None:
        if self._process is None:
            return
        self._stop.set()
        self._process.join(timeout=10)
        if self._process.is_alive():
            log.warning("housekeeper did not stop in 10 s; terminating it")
            self._process.terminate()
            self._process.join(timeout=5)
        self._process = None


def _yield_to_requests() -> None:
    """This thread, and the threads it starts from now on, run only when nothing else wants the CPU."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is None:
        os.nice(_FALLBACK_NICENESS)
    else:
        os.sched_setscheduler(0, idle, os.sched_param(0))


def run(*, settings: Settings, stop: Any, parent: int) -> None:
    """The child's body: wait for the lock, then integrate and checkpoint until stopped or orphaned."""
    foreground = Foreground()  # before going idle, so that it does not
    try:
        _yield_to_requests()  # the imports below are upkeep too, and threads inherit it
        _upkeep(settings=settings, stop=stop, parent=parent, foreground=foreground)
    finally:
        foreground.close()


def _upkeep(*, settings: Settings, stop: Any, parent: int, foreground: Foreground) -> None:
    # Imported here: the child is spawned, and the app module imports this one.
    from consent_service.app import build_log
    from consent_service.db import WalCheckpointer, make_engine

    logging.basicConfig(level=logging.WARNING)

    def alive() -> bool:
        # A parent killed without a chance to stop us must not leave a housekeeper behind.
        return os.getppid() == parent

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "housekeeping.lock", "a+b") as lock_file:
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop.wait(_STANDBY_SECONDS) or not alive():
                    return
        engine = make_engine(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)
        checkpointer = WalCheckpointer(engine, foreground=foreground)
        checkpointer.start()
        purger = UploadPurger(
            engine, interval=settings.verification_purge_interval_seconds, foreground=foreground
        )
        purger.start()
        transparency_log = build_log(settings, engine)
        # What the imports and set-up left is here for good, about 120,000 objects, and a full
        # GC pass walked all of it: one took 117 ms in 300 s at 1,500 checks/s (at SCHED_IDLE,
        # so preempted throughout), holding the GIL that Foreground needs between SQLite calls
        # while it holds the write lock every audit commit waits for. Frozen, a pass walks
        # only what upkeep allocated since: at most 11 ms in a run like it (bench/HTTP_LOG.md).
        gc.collect()
        gc.freeze()
        try:
            transparency_log.run(
                interval=settings.log_integrate_interval_seconds,
                stop=stop,
                alive=alive,
                foreground=foreground,
            )
        finally:
            transparency_log.close()
            purger.stop()
            checkpointer.stop()
            engine.dispose()
