"""One background thread that runs queued jobs one at a time: the in-process job backend."""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger(__name__)


class ThreadWorker:
    """Subclasses define `run(job_id)`; a crash in one job is logged and the next job runs."""

    thread_name = "worker"
    stop_timeout = 30.0

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def run(self, job_id: str) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=self.stop_timeout)
            self._thread = None

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self.run(job)
            except Exception:
                log.exception("%s job %s crashed", self.thread_name, job)
