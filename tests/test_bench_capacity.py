"""The benchmark's capacity search, its rate-against-speed summary and its paired decision
spread, on made-up measurements."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from bench import http_harness
from bench.capacity import capacity_by_speed, estimate


def _rate(
    rate: float, p99: float, probe: float | None = 0.3, achieved: float | None = None
) -> dict[str, Any]:
    return {
        "target_rps": rate,
        "achieved_rps": rate if achieved is None else achieved,
        "p99_ms": p99,
        **({"probe_median_ms": probe} if probe is not None else {}),
    }


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`load` on a made-up machine that meets the goal up to 2,200/s; records the rates run."""
    offered: list[int] = []

    def load(*, rate: int, **_: Any) -> dict[str, Any]:
        offered.append(rate)
        return _rate(rate, 4.0 if rate <= 2200 else 25.0)

    monkeypatch.setattr(http_harness, "load", load)
    return offered


def _search(top: int, top_met: bool) -> dict[str, Any]:
    return http_harness.headroom(
        8000,
        "token",
        Path("bodies.json"),
        top=top,
        top_met=top_met,
        step=500,
        seconds=1,
        repeats=3,
        server_pid=1,
    )


def test_a_met_top_rate_climbs_until_the_goal_is_missed_then_halves_the_last_step(machine: list[int]) -> None:
    found = _search(1500, top_met=True)
    assert machine == [2000] * 3 + [2500] * 3 + [2250] * 3 + [2125] * 3
    assert [s["met"] for s in found["steps"]] == [True, False, False, True]
    assert (found["direction"], found["highest_rate_meeting_goal"], found["over_top_rate"]) == (
        "up",
        2125,
        1.42,
    )


def test_a_missed_top_rate_falls_until_the_goal_is_met_then_halves_the_last_step(machine: list[int]) -> None:
    found = _search(3500, top_met=False)
    assert machine == [3000] * 3 + [2500] * 3 + [2000] * 3 + [2250] * 3 + [2125] * 3
    assert (found["direction"], found["highest_rate_meeting_goal"], found["over_top_rate"]) == (
        "down",
        2125,
        0.61,
    )


def test_a_search_that_never_meets_the_goal_reports_no_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_harness, "load", lambda *, rate, **_: _rate(rate, 40.0))
    found = _search(1500, top_met=False)
    assert [s["target_rps"] for s in found["steps"]] == [1000, 500]
    assert found["highest_rate_meeting_goal"] is None and found["over_top_rate"] is None


def test_a_server_that_falls_behind_misses_the_goal_whatever_its_p99() -> None:
    assert http_harness.meets_goal(_rate(1500, 3.0, achieved=1490))
    assert not http_harness.meets_goal(_rate(1500, 3.0, achieved=1400))
    assert not http_harness.meets_goal(_rate(1500, 10.5))


def test_capacity_sets_each_runs_highest_rate_against_its_speed() -> None:
    results = {
        "http_other_runs": [
            # From before the probe: no speed, left out.
            {
                "when": "a",
                "median_by_p99": [_rate(1500, 6.0, probe=None)],
                "headroom_highest_rate_meeting_goal": 2500,
            },
            # Kept from an earlier full run: the search's outcome only.
            {
                "when": "b",
                "median_by_p99": [_rate(800, 2.0, probe=0.2), _rate(1500, 3.0, probe=0.3)],
                "headroom_highest_rate_meeting_goal": 2500,
            },
            # No search, its top rate missed: a bound only.
            {"when": "c", "median_by_p99": [_rate(1500, 33.0, probe=0.8)]},
            # No search, its top rate met: says nothing about its capacity, left out.
            {"when": "d", "median_by_p99": [_rate(1500, 4.0, probe=0.3)]},
        ],
        "http": {
            "when": "e",
            "median_by_p99": [_rate(1500, 20.0, probe=0.8)],
            "headroom": {"highest_rate_meeting_goal": 1000},
        },
    }
    summary = capacity_by_speed(results)
    assert [(m["when"], m["probe_median_ms"], m["rate_times_probe"]) for m in summary["measured"]] == [
        ("b", 0.25, 625),
        ("e", 0.8, 800),
    ]
    assert [(m["when"], m["top_rate"]) for m in summary["missed_at_top"]] == [("c", 1500)]
    assert summary["rate_times_probe"] == {"min": 625, "median": 712, "max": 800}
    assert summary["probe_ms_for_goal_rate"] == {"min": 0.417, "median": 0.475, "max": 0.533}


def test_the_estimate_scales_the_band_by_the_machines_speed() -> None:
    band = {"min": 600, "median": 700, "max": 900}
    assert estimate(probe_ms=0.4, band=band)["checks_per_second_within_goal"] == {
        "min": 1500,
        "median": 1750,
        "max": 2250,
    }


def test_without_a_search_on_record_there_is_no_band_to_predict_from() -> None:
    summary = capacity_by_speed({"http_other_runs": [{"when": "d", "median_by_p99": [_rate(1500, 4.0)]}]})
    assert summary["measured"] == [] and summary["rate_times_probe"] is None
    assert summary["probe_ms_for_goal_rate"] is None


def _size(grants: int, rounds: list[float]) -> dict[str, Any]:
    return {"grants": grants, "decision": {"p99_ms_per_round": rounds}}


def test_paired_spread_sees_the_size_through_a_change_of_machine_speed():
    from bench.consent_check import paired_spread

    # The machine runs at 0.020 ms, then at 0.014; the change comes in the fifth round's turns,
    # after 1k and 1M ran it and before 100k did, and again after the sixth round's. 1M is 10%
    # slower than 1k throughout, 100k 5%.
    early, late = [0.020] * 4 + [0.014] * 6, [0.020] * 6 + [0.014] * 4
    sizes = [
        _size(1_000_000, [s * 1.10 for s in early]),
        _size(1_000, early),
        _size(100_000, [s * 1.05 for s in late]),
    ]
    medians = [statistics.median(s["decision"]["p99_ms_per_round"]) for s in sizes]
    assert max(medians) / min(medians) - 1 > 0.4  # the medians alone: the machine's change
    result = paired_spread(sizes)
    assert result["p99_over_smallest_by_round"] == {"1000": 1.0, "100000": 1.05, "1000000": 1.1}
    assert result["spread"] == pytest.approx(0.10, abs=1e-3)
    # Rounds that do not line up (a size with a round missing) are refused, not paired wrongly.
    with pytest.raises(ValueError):
        paired_spread([_size(1_000, early), _size(1_000_000, early[1:])])
