"""CPU accounting for the HTTP benchmark: per process and per machine, read from /proc.

Latency alone cannot say why a run was slow. The work per check is fixed, so the CPU time
each process spends per check, and the share of the machine's time the hypervisor took,
tell a slower machine from a service doing more work (bench/http_harness.py).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from pathlib import Path


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by a process and by each of its children."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {p: process_cpu(p) for p in [pid, *map(int, children)]}


def cpu_times() -> list[int]:
    """CPU time by kind, in ticks (/proc/stat: user nice system idle iowait irq softirq steal)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


class WindowSampler:
    """CPU used by the server's processes and by the machine, sampled through a long run.

    A soak's slow windows can come from the machine (a virtual CPU running slower, time
    stolen by the hypervisor) or from the service (more work per check: a checkpoint, the
    log catching up). The work per check is fixed, so its CPU time per window tells them
    apart: the same work taking more CPU time is a slower machine, one process taking more
    than the others is extra work there. Reading /proc every half second costs nothing the
    service would notice.
    """

    _EVERY_SECONDS = 0.5

    def __init__(self, server_pid: int) -> None:
        self._pid = server_pid
        self._samples: list[tuple[float, dict[int, float], list[int]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # a process ended between listing and reading
                self._samples.append((time.perf_counter(), tree_cpu(self._pid), cpu_times()))
            if self._done.wait(self._EVERY_SECONDS):
                return

    def stop(self) -> WindowSampler:
        self._done.set()
        self._thread.join()
        return self

    def by_window(self, *, start: float, window: float, requests: list[int]) -> list[dict]:
        """Per window: CPU ms per request of the server and of each child (largest over the run
        first), and the shares of the machine's CPU time that were busy and stolen."""
        samples = self._samples
        if not samples:
            return []

        def nearest(t: float) -> tuple[float, dict[int, float], list[int]]:
            return min(samples, key=lambda s: abs(s[0] - t))

        whole = {p: cpu - samples[0][1].get(p, 0.0) for p, cpu in samples[-1][1].items()}
        children = sorted((p for p in whole if p != self._pid), key=whole.__getitem__, reverse=True)
        out = []
        for k, count in enumerate(requests):
            _, cpu0, ticks0 = nearest(start + k * window)
            _, cpu1, ticks1 = nearest(start + (k + 1) * window)
            ticks = [b - a for a, b in zip(ticks0, ticks1, strict=True)]
            total = sum(ticks) or 1
            spent = {p: cpu1.get(p, 0.0) - cpu0.get(p, 0.0) for p in cpu1}
            per_request = {p: round(1000 * cpu / max(count, 1), 3) for p, cpu in spent.items()}
            out.append(
                {
                    "server": per_request.get(self._pid),
                    "children_largest_first": [per_request.get(p) for p in children],
                    "busy_share": round(1 - (ticks[3] + ticks[4]) / total, 3),
                    "steal_share": round(ticks[7] / total, 4),
                }
            )
        return out


def compare_windows(p99s: list[float | None], cpu: list[dict], *, goal_ms: float) -> dict:
    """Medians over the windows that missed the goal and over those that met it: did the
    service do more work per check in the slow ones, or did the same work take longer?"""

    def medians(picked: list[dict]) -> dict | None:
        if not picked:
            return None
        median = statistics.median_high
        return {
            "windows": len(picked),
            "server_cpu_ms_per_request": median([w["server"] or 0.0 for w in picked]),
            "children_cpu_ms_per_request": [
                median([w["children_largest_first"][i] or 0.0 for w in picked])
                for i in range(len(picked[0]["children_largest_first"]))
            ],
            "busy_share": median([w["busy_share"] for w in picked]),
            "steal_share": median([w["steal_share"] for w in picked]),
        }

    missed = [w for p, w in zip(p99s, cpu, strict=True) if p is None or p > goal_ms]
    met = [w for p, w in zip(p99s, cpu, strict=True) if p is not None and p <= goal_ms]
    timed = [(p, w) for p, w in zip(p99s, cpu, strict=True) if p is not None]
    p99 = [p for p, _ in timed]
    return {
        "missed": medians(missed),
        "met": medians(met),
        # Spearman's, between each window's p99 and what was measured in it.
        "rank_correlation_with_p99": {
            "server_cpu": _rank_correlation(p99, [w["server"] or 0.0 for _, w in timed]),
            "largest_child_cpu": _rank_correlation(
                p99, [(w["children_largest_first"] or [0.0])[0] or 0.0 for _, w in timed]
            ),
            "steal_share": _rank_correlation(p99, [w["steal_share"] for _, w in timed]),
        },
    }


def _rank_correlation(a: list[float], b: list[float]) -> float | None:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):  # ties share their mean rank
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(a) < 3:
        return None
    try:
        return round(statistics.correlation(ranks(a), ranks(b)), 3)
    except statistics.StatisticsError:  # one side constant
        return None
