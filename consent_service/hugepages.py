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
# A mapping less resident than this is left alone (see anonymous_ranges).
MIN_RESIDENT = 0.8
_SMAPS = Path("/proc/self/smaps")


@dataclass
class CollapseReport:
    """What one collapse did. `errors`: errno names by how many stretches failed with each
    (EINVAL from every one: before Linux 6.1, or THP `never`); `supported`: False where
    /proc/self/smaps or madvise could not be reached at all (not Linux)."""

    collapsed_bytes: int = 0
    failed_bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    supported: bool = True


def anonymous_ranges(smaps: str, *, min_resident: float = MIN_RESIDENT) -> list[tuple[int, int]]:
    """The 2 MB-aligned stretches of private, writable, anonymous mappings (and the brk heap)
    in a /proc/<pid>/smaps text that are at least `min_resident` in memory already.

    MADV_COLLAPSE fills every 4 KB page of a 2 MB stretch it collapses, touched or not, so a
    mapping mostly reserved and never written (an allocator's spare room) would swell RSS
    by what it never used; Python's arenas behind a loaded replica are nearly all resident."""
    ranges = []
    mapping: tuple[int, int] | None = None
    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if not parts[0].endswith(":"):  # a mapping's header: address range, perms, offset, dev, inode, path
            anonymous = len(parts) >= 5 and parts[1] == "rw-p" and (len(parts) == 5 or parts[5] == "[heap]")
            low, high = (int(bound, 16) for bound in parts[0].split("-"))
            mapping = (low, high) if anonymous else None
        elif parts[0] == "Rss:" and mapping is not None:
            low, high = mapping
            mapping = None
            if int(parts[1]) * 1024 < min_resident * (high - low):
                continue
            start, end = (low + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), high & ~(HUGE_PAGE - 1)
            if end > start:
                ranges.append((start, end))
    return ranges


def collapse_heap() -> CollapseReport:
    """Ask for every anonymous stretch of this process to be moved onto 2 MB pages now."""
    report = CollapseReport()
    began = time.perf_counter()
    try:
        smaps = _SMAPS.read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        report.supported = False
        return report
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    for start, end in anonymous_ranges(smaps):
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
