"""Interleaved A/B of the HTTP consent check: this checkout against another commit, at one rate.

This machine is shared, and its noise changes by the hour: the same code measured p99 6 ms and
13 ms at 1,500 checks/s twenty minutes apart (bench/HTTP_LOG.md). One run of
consent_check.py says little about a change; two versions compared in alternating sessions in
one sitting say more. Each side gets a 100k-grant database built by its own code (migrations
may differ), copied afresh for every session. A session starts that side's server, warms it up,
and runs the load generator `--runs` times; sessions go A B B A A B ... Reported per side: every
run, the median p99, and the CPU of the server process and of each of its children.

    python bench/http_ab.py --base e5d56a6 --what "..." [--rate 1500] [--pairs 4] [--runs 3]

`--this-env NAME=VALUE` (repeatable) sets the environment of this side's server only, so
one commit can be compared with itself under another setting:

    python bench/http_ab.py --base HEAD --this-env CONSENT_AUDIT_WRITER=journal --what "..."

Each comparison is appended to bench/results/http_ab.json, with what it compared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu_account import tree_cpu  # noqa: E402
from bench.http_harness import check_bodies, free_port, load, serve  # noqa: E402
from bench.machine import machine_state  # noqa: E402

# Run in the side's own checkout, so its own migrations and dataset code build the database.
_BUILD = """
import dataclasses, json, sys
from bench.dataset import build
json.dump(dataclasses.asdict(build(sys.argv[1], grants=100_000)), open(sys.argv[2], "w"))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def _prepare(code: Path, into: Path) -> SimpleNamespace:
    into.mkdir(parents=True)
    meta = into / "dataset.json"
    subprocess.run(
        [sys.executable, "-c", _BUILD, f"sqlite:///{into}/http.db", str(meta)], cwd=code, check=True
    )
    data = SimpleNamespace(**json.loads(meta.read_text()))
    (into / "bodies.json").write_text(json.dumps(check_bodies(data)))
    return data


def _session(
    code: Path, built: Path, token: str, env: dict[str, str], a: argparse.Namespace
) -> tuple[list[dict], dict]:
    run = built.with_name(built.name + "-run")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(built, run)
    port = free_port()
    server = serve(f"sqlite:///{run}/http.db", port, str(run), env, cwd=code)
    try:
        load(port=port, token=token, bodies=run / "bodies.json", rate=a.rate, seconds=a.seconds, warmup=True)
        before, t0 = tree_cpu(server.pid), time.monotonic()
        runs = [
            load(port=port, token=token, bodies=run / "bodies.json", rate=a.rate, seconds=a.seconds)
            for _ in range(a.runs)
        ]
        after, elapsed = tree_cpu(server.pid), time.monotonic() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(run, ignore_errors=True)
    cores = {p: round((after[p] - before.get(p, 0.0)) / elapsed, 3) for p in after}
    return runs, {
        "server": cores.pop(server.pid),
        "children_largest_first": sorted(cores.values(), reverse=True),
    }


def _setting(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"--this-env wants NAME=VALUE, not {item!r}")
    return name, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare this checkout with")
    ap.add_argument("--rate", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3, help="load-generator runs per session")
    ap.add_argument("--what", required=True, help="what the comparison is about, kept with its results")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_ab.json")
    ap.add_argument(
        "--this-env", action="append", default=[], metavar="NAME=VALUE", help="for this side's server only"
    )
    a = ap.parse_args()
    this_env = dict(_setting(item) for item in a.this_env)
    tmp = Path(tempfile.mkdtemp(prefix="consent-ab-"))
    base_code = tmp / "base-code"
    _git("worktree", "add", "--detach", str(base_code), a.base)
    sides = {
        "base": {"commit": _git("rev-parse", "--short", a.base), "code": base_code, "env": {}},
        "this": {"commit": _git("describe", "--always", "--dirty"), "code": ROOT, "env": this_env},
    }
    try:
        for name, side in sides.items():
            side["built"] = tmp / name
            side["token"] = _prepare(side["code"], side["built"]).platform_token
            side["runs"], side["cpu"] = [], []
        state_before = machine_state(str(tmp))
        for pair in range(a.pairs):
            for name in ("base", "this") if pair % 2 == 0 else ("this", "base"):
                side = sides[name]
                runs, cpu = _session(side["code"], side["built"], side["token"], side["env"], a)
                side["runs"] += runs
                side["cpu"].append(cpu)
                print(name, [r["p99_ms"] for r in runs], cpu, flush=True)
        state_after = machine_state(str(tmp))
    finally:
        _git("worktree", "remove", "--force", str(base_code))
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "what": a.what,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate": a.rate,
        "seconds_per_run": a.seconds,
        "pairs": a.pairs,
        "runs_per_session": a.runs,
        "machine_state": {"before": state_before, "after": state_after},
    }
    for name, side in sides.items():
        p99s = [r["p99_ms"] for r in side["runs"]]
        result[name] = {
            "commit": side["commit"],
            "env": side["env"],
            "median_p99_ms": statistics.median(p99s),
            "median_p50_ms": statistics.median(r["p50_ms"] for r in side["runs"]),
            "p99_ms_sorted": sorted(p99s),
            "cpu_cores_per_session": side["cpu"],
            "runs": side["runs"],
        }
        print(name, side["commit"], "median p99", result[name]["median_p99_ms"], "ms")
    earlier = json.loads(a.out.read_text())["comparisons"] if a.out.exists() else []
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"comparisons": [*earlier, result]}, indent=2) + "\n")
    print(f"added to {a.out}")


if __name__ == "__main__":
    main()
