"""Background threads that do one piece of upkeep every so often, for the life of a process."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick()` every `interval` seconds on a daemon thread, until stopped.

    A tick that raises is logged and tried again at the next one: upkeep has to outlive a
    bad moment (a busy database, an unreachable webhook receiver).
    """

    def __init__(self, *, name: str, interval: float) -> None:
        self._name = name
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception:
                log.exception("%s failed; trying again in %g s", self._name, self._interval)
