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

MAPS = """\
00400000-00600000 r--p 00000000 fd:01 42   /usr/bin/python3.11
00600000-00a00000 rw-p 00200000 fd:01 42   /usr/bin/python3.11
00a00000-01300000 rw-p 00000000 00:00 0    [heap]
7f0000100000-7f0000900000 rw-p 00000000 00:00 0
7f0000900000-7f0000a00000 rw-p 00000000 00:00 0
7f0000a00000-7f0000c00000 r--p 00000000 00:00 0
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0    [stack]
"""


def test_anonymous_ranges_are_the_aligned_stretches_of_private_writable_anonymous_memory():
    # Not a file's data segment, read-only memory, the stack, or a stretch under 2 MB.
    assert anonymous_ranges(MAPS) == [
        (0x00A00000, 0x01200000),  # the brk heap, its unaligned tail left out
        (0x7F0000200000, 0x7F0000800000),  # both ends rounded inwards to 2 MB
    ]


def _anon_huge_kb(address: int) -> int | None:
    """AnonHugePages of the mapping holding `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(bound, 16) for bound in head.split("-"))
            inside = low <= address < high
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_COLLAPSE is Linux's")
def test_collapse_moves_touched_anonymous_memory_onto_huge_pages():
    size = 16 * HUGE_PAGE
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        block.write(b"\x01" * size)  # touched, as a loaded replica's heap is
        address = _address_of(block)
        report = collapse_heap()
        assert report.supported and report.seconds > 0
        if errno.errorcode[errno.EINVAL] in report.errors and not report.collapsed_bytes:
            pytest.skip("this kernel cannot collapse (before Linux 6.1, or THP set to never)")
        assert report.collapsed_bytes >= 14 * HUGE_PAGE, report  # at least our block's aligned part
        assert report.collapsed_bytes % HUGE_PAGE == 0 and report.failed_bytes % HUGE_PAGE == 0
        after = _anon_huge_kb(address)
        assert after is not None and after >= 14 * (HUGE_PAGE >> 10)
        assert block[:4] == b"\x01" * 4 and block[-4:] == b"\x01" * 4  # the contents moved with it
    finally:
        block.close()


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
