"""The benchmark's vCPU stall sentinels: the arithmetic on made-up stalls, and real sentinels
stopped from outside, where this machine lets them run at SCHED_FIFO."""

from __future__ import annotations

import os
import signal
import time

import pytest

from bench.vcpu_stalls import StallWatch, can_watch, split_missed_windows, summarize


def test_only_the_time_every_vcpu_stalled_at_once_counts_as_the_guest_stopped() -> None:
    stalls = {
        0: [(10.000, 10.020), (11.000, 11.005)],
        1: [(10.010, 10.030), (12.000, 12.100)],
    }
    out = summarize(stalls, span=(9.5, 12.05), window=1.0, windows=3)
    assert out is not None
    assert (out["vcpus"], out["stalls"]) == (2, 4)
    assert out["longest_ms"] == 50.0  # vCPU 1's last stall, cut at the span's end
    assert out["all_vcpus_stalled_ms"] == 10.0  # 10.010-10.020 only
    assert out["longest_all_vcpus_ms"] == 10.0
    assert out["all_vcpus_stalled_ms_by_window"] == [10.0, 0.0, 0.0]


def test_stalls_outside_the_measured_span_are_left_out() -> None:
    out = summarize({0: [(1.0, 2.0)], 1: [(1.0, 2.0)]}, span=(5.0, 6.0))
    assert out is not None
    assert (out["stalls"], out["all_vcpus_stalled_ms"]) == (0, 0.0)
    assert summarize(None, span=(5.0, 6.0)) is None  # no sentinels on this machine


def test_missed_windows_are_split_by_whether_the_guest_stopped_as_long_as_the_goal_in_them() -> None:
    out = split_missed_windows(
        [2.0, 14.0, 21.0, None, 3.0, 12.0], [0.0, 22.5, 0.0, 0.0, 9.0, 4.0], goal_ms=10.0
    )
    assert out["missed_windows_with_guest_stopped"] == 1
    # 21 ms with no stop, a window with no answer at all, and 12 ms beside a 4 ms stop
    assert out["missed_windows_without"] == 3


@pytest.mark.skipif(not can_watch(), reason="SCHED_FIFO needs root or CAP_SYS_NICE here")
def test_real_sentinels_report_a_stop_of_every_vcpu() -> None:
    watch = StallWatch()
    procs = list(watch._procs.values())
    assert len(procs) == len(os.sched_getaffinity(0))
    time.sleep(0.1)
    start = time.perf_counter()
    for p in procs:  # a stand-in for the hypervisor pausing the guest
        os.kill(p.pid, signal.SIGSTOP)
    time.sleep(0.08)
    for p in procs:
        os.kill(p.pid, signal.SIGCONT)
    time.sleep(0.1)
    out = summarize(watch.stop(), span=(start - 0.1, time.perf_counter()))
    assert out is not None
    assert out["longest_all_vcpus_ms"] >= 60.0
    assert out["all_vcpus_stalled_ms"] < 200.0
