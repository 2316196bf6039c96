"""When the virtual CPUs themselves stopped: one real-time sentinel per vCPU, for the HTTP benchmark.

On 2026-12-01 (seventeenth sitting, an idle machine at probe 0.24 ms) a 300 s soak at
1,500/s missed the goal in 3 of 60 windows, with p99 1.8 ms in the rest. A system-wide
`perf sched` trace of a run like it showed what happened in each slow stretch: no
scheduler event at all, on either vCPU, for 14-38 ms, while the load generator's timer
was due and the trace showed it woken late by as much (a woken task waiting 24.6 ms on a
CPU that the trace calls idle). Nothing inside a machine stops both of its CPUs with a
timer due; the hypervisor had paused the guest. The machine's steal counter stayed at 0.

Such pauses are not the service's latency, but they land in its p99. So every load run
has these sentinels beside it: a process pinned to each vCPU at `SCHED_FIFO`, sleeping
5 ms at a time. Nothing of ours (the server, its helpers, the load generator, a busy
neighbour, all at `SCHED_OTHER`) can hold a real-time task off its CPU, so a wake-up more
than 2 ms late means the vCPU was not running it (or the kernel ran with preemption off that
long). Where all vCPUs stalled at once the whole guest was stopped. Checked against `perf
sched` in one run: the sentinels found the same stretches (HTTP_LOG.md, seventeenth sitting).

A `SCHED_FIFO` task needs CAP_SYS_NICE; without it the sentinels are not started and runs
carry no stall figures. Together they cost the server 3% more CPU a check at 1,500/s, p99
unchanged; waking every 1 ms they cost 8% (HTTP_LOG.md).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from typing import Any

# A late wake-up beyond this is a stall: well over a wake-up's own jitter at SCHED_FIFO.
LATE_MS = 2.0
_SLEEP_S = 0.005

_SENTINEL = """
import json, os, signal, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[2])))
sleep_s, late_s = float(sys.argv[3]), float(sys.argv[4])
stalls, running = [], [True]
signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
clock = time.perf_counter
print("ready", flush=True)
before = clock()
while running[0]:
    time.sleep(sleep_s)
    now = clock()
    if now - before > sleep_s + late_s:
        stalls.append((before + sleep_s, now))
    before = now
json.dump(stalls, sys.stdout)
"""


class StallWatch:
    """Sentinels on every vCPU this process may run on, for the span of one load run.

    `stop()` returns each vCPU's stalls as (start, end) on the system-wide monotonic clock
    (`time.perf_counter()` on Linux, which the load generator's windows use too), or None
    where sentinels cannot run here.
    """

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        if not can_watch():
            return
        priority = os.sched_get_priority_min(os.SCHED_FIFO)
        for cpu in sorted(os.sched_getaffinity(0)):
            args = [str(cpu), str(priority), str(_SLEEP_S), str(LATE_MS / 1000)]
            proc = subprocess.Popen(
                [sys.executable, "-c", _SENTINEL, *args], stdout=subprocess.PIPE, text=True
            )
            self._procs[cpu] = proc
            assert proc.stdout is not None
            if proc.stdout.readline() != "ready\n":  # pinned and real-time before the run starts
                self.stop()
                raise RuntimeError(f"the stall sentinel for vCPU {cpu} did not start")

    def stop(self) -> dict[int, list[tuple[float, float]]] | None:
        procs, self._procs = self._procs, {}
        out = {}
        for cpu, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=30)
            out[cpu] = [(s, e) for s, e in json.loads(stdout or "[]")]
        return out or None


@functools.cache
def can_watch() -> bool:
    """Whether this process may start real-time tasks (root, or CAP_SYS_NICE): tried in a child."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Where two sorted lists of disjoint intervals overlap."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _within(spans: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The parts of `spans` inside [start, end)."""
    return [(max(s, start), min(e, end)) for s, e in spans if e > start and s < end]


def summarize(
    stalls: dict[int, list[tuple[float, float]]] | None,
    *,
    span: tuple[float, float],
    window: float | None = None,
    windows: int = 0,
) -> dict[str, Any] | None:
    """Within `span` (a run's measured part): how many stalls, the longest, and the
    milliseconds in which every vCPU was stalled at once (the guest stopped); with `window`,
    that last figure for each window from the span's start."""
    if stalls is None:
        return None
    start, end = span
    spans = [_within(sorted(cpu_spans), start, end) for cpu_spans in stalls.values()]
    every = spans[0]
    for other in spans[1:]:
        every = _overlap(every, other)
    lengths = [e - s for cpu_spans in spans for s, e in cpu_spans]
    out: dict[str, Any] = {
        "late_over_ms": LATE_MS,
        "vcpus": len(spans),
        "stalls": len(lengths),
        "longest_ms": round(1000 * max(lengths, default=0.0), 1),
        "all_vcpus_stalled_ms": round(1000 * sum((e - s for s, e in every), 0.0), 1),
        "longest_all_vcpus_ms": round(1000 * max((e - s for s, e in every), default=0.0), 1),
    }
    if window:
        out["all_vcpus_stalled_ms_by_window"] = [
            round(
                1000
                * sum((e - s for s, e in _within(every, start + k * window, start + (k + 1) * window)), 0.0),
                1,
            )
            for k in range(windows)
        ]
    return out


def split_missed_windows(p99s: list[float | None], stopped: list[float], *, goal_ms: float) -> dict:
    """Each window's milliseconds with the whole guest stopped, and the windows that missed the
    goal split by whether it stopped for at least `goal_ms` in them: a stop that long alone puts
    every check due or in flight during it over the goal. The others are the misses the service
    has to answer for."""
    missed = [k for k, p in enumerate(p99s) if p is None or p > goal_ms]
    return {
        "window_all_vcpus_stalled_ms": stopped,
        "missed_windows_with_guest_stopped": sum(1 for k in missed if stopped[k] >= goal_ms),
        "missed_windows_without": sum(1 for k in missed if stopped[k] < goal_ms),
    }
