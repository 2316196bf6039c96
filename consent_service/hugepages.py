"""Back this process's heap with 2 MB pages once a large consent replica is loaded (Linux 6.1+).

A decision at 1M grants reads about ten objects scattered over some 400 MB of
heap, and with 4 KB pages nearly every one of those reads also misses the TLB.
On these virtual machines a TLB miss walks two sets of page tables (the guest's
and the host's), which is a good part of why a decision at 1M is slower than at
1k. MADV_COLLAPSE asks the kernel to copy each whole 2 MB stretch of anonymous
memory into a huge page at once, whatever the system's THP setting short of
`never` (the `madvise` setting here leaves Python's heap on 4 KB pages). Measured
with the replica loaded at 1M grants, in turns with one left on small pages
(bench/HTTP_LOG.md, thirteenth sitting): a granted decision's p50 0.0136 against
0.0142 ms, and 374 MB collapsed in 0.9 s.

Best effort: on other systems, older kernels or a `never` setting nothing
changes and nothing is raised.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Below this many rules the replica fits the TLB's reach anyway, and the collapse costs
# about 0.25 s per 100 MB of heap (the default of Settings.replica_huge_pages_min_rules).
DEFAULT_MIN_RULES = 100_000
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
_MAPS = Path("/proc/self/maps")


@dataclass
class CollapseReport:
    collapsed_bytes: int = 0
    failed_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    supported: bool = True


def anonymous_ranges(maps: str) -> list[tuple[int, int]]:
    """The 2 MB-aligned stretches of private, writable, anonymous mappings (and the brk heap)
    in a /proc/<pid>/maps text: the ones MADV_COLLAPSE can turn into huge pages."""
    ranges = []
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[1] != "rw-p" or (len(parts) > 5 and parts[5] != "[heap]"):
            continue
        low, high = (int(bound, 16) for bound in parts[0].split("-"))
        start, end = (low + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), high & ~(HUGE_PAGE - 1)
        if end > start:
            ranges.append((start, end))
    return ranges


def collapse_heap() -> CollapseReport:
    """Ask for every anonymous stretch of this process to be moved onto 2 MB pages now."""
    report = CollapseReport()
    began = time.perf_counter()
    try:
        maps = _MAPS.read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        report.supported = False
        return report
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    for start, end in anonymous_ranges(maps):
        if madvise(start, end - start, MADV_COLLAPSE) == 0:
            report.collapsed_bytes += end - start
            continue
        code = ctypes.get_errno()
        report.failed_bytes += end - start
        name = errno.errorcode.get(code, str(code))
        report.errors[name] = report.errors.get(name, 0) + 1  # EINVAL: before 6.1, or `never`
    report.seconds = time.perf_counter() - began
    log.info(
        "huge pages: %d MB of the heap collapsed, %d MB not (%s) in %.2f s",
        report.collapsed_bytes >> 20,
        report.failed_bytes >> 20,
        report.errors or "no errors",
        report.seconds,
    )
    return report
