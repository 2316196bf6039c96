"""How many consent checks a second a machine holds within the HTTP goal, against how fast it runs.

The same service code met the goal (p99 ≤ 10 ms) up to 4,000 checks/s on one machine and
missed it at 1,500/s on another, and on one machine from one half hour to the next. What moved
with it was the steadiness probe (`bench.machine.cpu_steadiness`: the time a fixed piece of
Python work takes on the idle machine), which every HTTP run records. Across the runs on
record, the highest rate meeting the goal times the probe's median stays within a band, so a
few seconds of probe on an idle machine estimate what the service will hold there:
`python -m bench.capacity` prints that estimate from the committed results.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.http_harness import meets_goal
from bench.machine import cpu_steadiness

# The rate for the HTTP goal, in checks a second on 2 cores.
GOAL_RATE = 1500

RESULTS = Path(__file__).resolve().parent / "results" / "consent_check.json"


def run_speed(run: dict[str, Any]) -> float | None:
    """The median of a run's per-rate probe medians, in ms; None for runs from before the probe."""
    probes = [m["probe_median_ms"] for m in run.get("median_by_p99", []) if m.get("probe_median_ms")]
    return statistics.median(probes) if probes else None


def _highest_met(run: dict[str, Any]) -> int | None:
    # A full run holds its search; a run kept in `http_other_runs`, only the search's outcome.
    if "headroom" in run:
        return run["headroom"].get("highest_rate_meeting_goal")
    return run.get("headroom_highest_rate_meeting_goal")


def capacity_by_speed(results: dict[str, Any]) -> dict[str, Any]:
    """Each run on record with a probe: its speed, and the highest rate meeting the goal or a missed top rate.

    `rate_times_probe` is that product for the runs whose search found the highest rate; a run
    without a search whose top rate missed the goal says only that its product lay below
    `top rate x probe` (`missed_at_top`). The search moves in steps (500/s by default), halved
    twice at the end since the twelfth sitting, so each product is a lower bound: short by up to
    a quarter step times the probe, or a whole step in the earlier runs.
    """
    runs = [*results.get("http_other_runs", []), *([results["http"]] if "http" in results else [])]
    measured, missed = [], []
    for run in runs:
        probe = run_speed(run)
        if probe is None:
            continue
        point = {"when": run.get("when"), "commit": run.get("commit"), "probe_median_ms": round(probe, 4)}
        highest = _highest_met(run)
        top = max(run["median_by_p99"], key=lambda m: m["target_rps"])
        if highest:
            product = round(highest * probe)
            measured.append({**point, "highest_rate_meeting_goal": highest, "rate_times_probe": product})
        elif not meets_goal(top):
            missed.append({**point, "top_rate": top["target_rps"], "top_p99_ms": top["p99_ms"]})
    products = sorted(p["rate_times_probe"] for p in measured)
    band = (
        {"min": products[0], "median": round(statistics.median(products)), "max": products[-1]}
        if products
        else None
    )
    return {
        "what": "highest rate meeting the HTTP goal x the steadiness probe's median (ms), run by run",
        "measured": measured,
        "missed_at_top": missed,
        "rate_times_probe": band,
        # The rate: the probe a machine needs for the band's low, middle and high end to hold it.
        "probe_ms_for_goal_rate": {k: round(v / GOAL_RATE, 3) for k, v in band.items()} if band else None,
    }


def estimate(*, probe_ms: float, band: dict[str, int]) -> dict[str, Any]:
    """The rates the band on record predicts for a machine whose probe median is `probe_ms`."""
    return {
        "probe_median_ms": round(probe_ms, 4),
        "checks_per_second_within_goal": {k: round(v / probe_ms) for k, v in band.items()},
    }


def main() -> None:
    band = capacity_by_speed(json.loads(RESULTS.read_text()))["rate_times_probe"]
    if band is None:
        raise SystemExit(f"{RESULTS} holds no run with a capacity search")
    probe = statistics.median(cpu_steadiness(seconds=2.0)["work_median_ms"] for _ in range(3))
    print(json.dumps(estimate(probe_ms=probe, band=band), indent=2))


if __name__ == "__main__":
    main()
