"""The consent replica's heap on 2 MB pages: which memory is asked for, and that it happens."""

from __future__ import annotations

import errno
import mmap
import sys
from pathlib import Path

import pytest

from consent_service.db import make_engine
from consent_service.hugepages import HUGE_PAGE, anonymous_ranges, collapse_heap
from consent_service.replica import ConsentReplica
from policy.likeness import LikenessPolicy


def _smaps(*mappings: tuple[str, int]) -> str:
    """A /proc/<pid>/smaps text: each mapping's header line, then its Rss in kB among other fields."""
    return "".join(
        f"{header}\nSize: 0 kB\nRss: {rss_kb} kB\nAnonHugePages: 0 kB\nVmFlags: rd wr mr mw me ac\n"
        for header, rss_kb in mappings
    )


SMAPS = _smaps(
    ("00400000-00600000 r--p 00000000 fd:01 42   /usr/bin/python3.11", 2048),
    ("00600000-00a00000 rw-p 00200000 fd:01 42   /usr/bin/python3.11", 4096),
    ("00a00000-01300000 rw-p 00000000 00:00 0    [heap]", 9 * 1024),
    ("7f0000100000-7f0000900000 rw-p 00000000 00:00 0", 7 * 1024),
    ("7f0000900000-7f0000a00000 rw-p 00000000 00:00 0", 1024),
    ("7f0000a00000-7f0000c00000 r--p 00000000 00:00 0", 2048),
    ("7f1000000000-7f1040000000 rw-p 00000000 00:00 0", 64 * 1024),  # 1 GB reserved, 64 MB used
    ("7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0    [stack]", 4096),
)


def test_anonymous_ranges_are_the_aligned_stretches_of_resident_private_anonymous_memory():
    # Not a file's data segment, read-only memory, the stack, a stretch under 2 MB, or a mapping
    # mostly never written (collapsing it would fill all of it).
    assert anonymous_ranges(SMAPS) == [
        (0x00A00000, 0x01200000),  # the brk heap, its unaligned tail left out
        (0x7F0000200000, 0x7F0000800000),  # both ends rounded inwards to 2 MB
    ]
    assert (0x7F1000000000, 0x7F1040000000) in anonymous_ranges(SMAPS, min_resident=0.05)


def _anon_huge_kb(address: int) -> int | None:
    return _field_kb(address, "AnonHugePages:")


def _field_kb(address: int, name: str) -> int | None:
    """A kB field of the mapping holding `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(bound, 16) for bound in head.split("-"))
            inside = low <= address < high
        elif inside and head == name:
            return int(line.split()[1])
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_COLLAPSE is Linux's")
def test_collapse_moves_touched_anonymous_memory_onto_huge_pages_and_leaves_sparse_memory_alone():
    size = 16 * HUGE_PAGE
    dense = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    sparse = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        # Adjacent anonymous mappings with the same flags are merged into one (with each other,
        # or with a thread's mostly untouched stack); a flag of no consequence here, different
        # for each, keeps each a mapping of its own.
        dense.madvise(mmap.MADV_DONTDUMP)
        sparse.madvise(mmap.MADV_DONTFORK)
        dense.write(b"\x01" * size)  # touched, as a loaded replica's heap is
        sparse[0] = 1  # one page of 8,192 touched
        report = collapse_heap()
        assert report.supported and report.seconds > 0
        if errno.errorcode[errno.EINVAL] in report.errors and not report.collapsed_bytes:
            pytest.skip("this kernel cannot collapse (before Linux 6.1, or THP set to never)")
        assert report.collapsed_bytes >= 14 * HUGE_PAGE, report  # at least our block's aligned part
        assert report.collapsed_bytes % HUGE_PAGE == 0 and report.failed_bytes % HUGE_PAGE == 0
        dense_huge_kb = _anon_huge_kb(_address_of(dense))
        assert dense_huge_kb is not None and dense_huge_kb >= 14 * (HUGE_PAGE >> 10)
        assert dense[:4] == b"\x01" * 4 and dense[-4:] == b"\x01" * 4  # the contents moved with it
        assert _anon_huge_kb(_address_of(sparse)) == 0 and _rss_kb(_address_of(sparse)) < 1024
    finally:
        dense.close()
        sparse.close()


def _rss_kb(address: int) -> int | None:
    return _field_kb(address, "Rss:")


def _address_of(block: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(block))


@pytest.mark.parametrize("min_rules", [0, 1, 10**9])
def test_replica_collapses_only_from_its_rule_count_on(api, min_rules):
    api.user_with_cameo("alice")
    api.principal("bob")
    api.call(
        "POST", "/v1/cameos/alice/grants", "alice", json={"grantee_handle": "bob", "purposes": ["generate"]}
    )
    engine = make_engine(api.settings.resolved_database_url)
    try:
        replica = ConsentReplica(engine=engine, policy=LikenessPolicy(), huge_pages_min_rules=min_rules)
        replica.load()
        assert replica.policy.rule_count >= 1
        if min_rules == 1:
            assert replica.huge_pages is not None and replica.huge_pages.supported
        else:  # 0: turned off; a billion: more rules than loaded
            assert replica.huge_pages is None
    finally:
        engine.dispose()
