"""Audit-log benchmark: durable appends/s (SQLite, PostgreSQL), proofs at 1M entries, export verification.

Writes bench/results/audit_log.json. `python bench/audit_log.py [--entries 1000000] [--skip-pg]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "audit_log.json"
PG_URL = os.environ.get("CONSENT_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/consent_bench")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)


def appends(url: str, *, synchronous: str = "NORMAL", seconds: float = 4.0) -> dict:
    """Durable appends per second: group-committed (many producers) and one transaction per append."""
    from sqlmodel import Session

    from consent_service.audit_writer import AuditWriter
    from consent_service.db import make_engine, write_transaction
    from consent_service.services.changes import Event, write_events

    engine = make_engine(url, sqlite_synchronous=synchronous)
    event = Event(
        "consent.check",
        "a" * 32,
        "b" * 32,
        decision="allow",
        reason="granted",
        details={"check_id": "c" * 32, "caller": "d" * 32, "purpose": "generate", "prompt_sha256": "e" * 64},
    )
    writer = AuditWriter(engine)
    writer.start()

    async def producers(n: int) -> int:
        done = 0
        stop = time.perf_counter() + seconds

        async def one() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await writer.append([event], revision=1)
                done += 1

        await asyncio.gather(*[one() for _ in range(n)])
        return done

    t = time.perf_counter()
    grouped = asyncio.run(producers(64))
    grouped_rate = grouped / (time.perf_counter() - t)
    writer.stop()
    single, lat = 0, []
    stop = time.perf_counter() + seconds
    t = time.perf_counter()
    while time.perf_counter() < stop:
        s0 = time.perf_counter()
        with Session(engine) as session, write_transaction(session):
            write_events(session, [event], revision=1)
            session.commit()
        lat.append(time.perf_counter() - s0)
        single += 1
    single_rate = single / (time.perf_counter() - t)
    engine.dispose()
    return {
        "group_commit_per_s": round(grouped_rate),
        "group_commit_producers": 64,
        "one_tx_per_append_per_s": round(single_rate),
        "one_tx_p50_ms": _pct(lat, 0.5),
        "one_tx_p99_ms": _pct(lat, 0.99),
    }


def _fill(url: str, n: int) -> float:
    """Insert n sequenced audit rows directly (the realistic writer path is measured above)."""
    from sqlalchemy import text

    from audit.entry import encode_entry
    from consent_service.db import make_engine
    from consent_service.models import AuditEvent

    engine = make_engine(url)
    table = AuditEvent.__table__  # type: ignore[attr-defined]
    at = datetime.now(UTC)
    t = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, n, 50_000):
            rows = []
            for seq in range(start, min(n, start + 50_000)):
                fields = {
                    "at": at,
                    "actor_id": f"{seq:032x}",
                    "subject_id": f"{seq * 7:032x}",
                    "action": "consent.check",
                    "decision": "allow",
                    "reason": "granted",
                    "revision": seq,
                    "details": {"check_id": f"{seq:032x}"},
                }
                rows.append({**fields, "seq": seq, "entry": encode_entry(seq=seq, **fields)})
            conn.execute(table.insert(), rows)
        conn.execute(text("UPDATE log_counter SET next = :n"), {"n": n})
    engine.dispose()
    return time.perf_counter() - t


def at_scale(n: int) -> dict:
    """Integrate n entries, then time proofs and a full export verified offline."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.log import TransparencyLog
    from audit.notes import NoteSigner
    from audit.verifier import VerifierKey, verify_export
    from consent_service.db import make_engine, migrate

    tmp = tempfile.mkdtemp(prefix="audit-bench-")
    url = f"sqlite:///{tmp}/log.db"
    migrate(url)
    fill_s = _fill(url, n)
    engine = make_engine(url)
    log = TransparencyLog(
        engine, signer=NoteSigner(name="bench.example/log", key=Ed25519PrivateKey.generate())
    )
    t = time.perf_counter()
    while log.integrate(max_leaves=100_000) is not None:
        pass
    integrate_s = time.perf_counter() - t
    size = log.checkpoint().size
    rng = random.Random(5)
    inc, con = [], []
    for _ in range(1000):
        i = rng.randrange(size)
        s0 = time.perf_counter()
        log.inclusion_proof(index=i, size=size)
        inc.append(time.perf_counter() - s0)
        first = rng.randrange(1, size)
        s0 = time.perf_counter()
        log.consistency_proof(first=first, second=size)
        con.append(time.perf_counter() - s0)
    export_path = Path(tmp) / "export.ndjson"
    t = time.perf_counter()
    with export_path.open("w") as f:
        for line in log.export():
            f.write(line)
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    with export_path.open() as f:
        report = verify_export(f, key=VerifierKey.parse(log.signer.vkey))
    verify_s = time.perf_counter() - t
    assert report.entries == size == n
    result = {
        "entries": n,
        "database": "sqlite",
        "fill_s": round(fill_s, 1),
        "integrate_s": round(integrate_s, 1),
        "inclusion_proof": {"n": 1000, "p50_ms": _pct(inc, 0.5), "p99_ms": _pct(inc, 0.99)},
        "consistency_proof": {"n": 1000, "p50_ms": _pct(con, 0.5), "p99_ms": _pct(con, 0.99)},
        "export_with_proofs_s": round(export_s, 1),
        "export_mb": round(export_path.stat().st_size / 1e6),
        "offline_verify_s": round(verify_s, 1),
        "offline_verify_checks": "signature, every inclusion proof, root recomputed from all entries",
    }
    engine.dispose()
    export_path.unlink()
    return result


def rebuild(n: int) -> dict:
    """A lost tree file rebuilt over one checkpoint of n entries (a backlog signed at once), in a fresh
    process so that its peak RSS is the rebuild's own."""
    import subprocess

    from consent_service.db import migrate

    tmp = tempfile.mkdtemp(prefix="audit-rebuild-")
    db = f"{tmp}/log.db"
    migrate(f"sqlite:///{db}")
    _fill(f"sqlite:///{db}", n)
    log = _bench_log(db)
    while log.integrate(max_leaves=100_000, sign=False) is not None:
        pass
    assert log.integrate(max_leaves=1) == n  # one checkpoint over everything
    _drop_tree(log)
    out = subprocess.run(
        [sys.executable, __file__, "--rebuild-child", db], capture_output=True, text=True, check=True
    )
    return {"entries_in_one_checkpoint": n, **json.loads(out.stdout)}


def _bench_log(db: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit.log import TransparencyLog
    from audit.notes import NoteSigner
    from consent_service.db import make_engine

    key = Ed25519PrivateKey.from_private_bytes(b"b" * 32)  # the same key in both processes
    return TransparencyLog(
        make_engine(f"sqlite:///{db}"), signer=NoteSigner(name="bench.example/log", key=key)
    )


def _drop_tree(log) -> None:
    from sqlalchemy import text

    with log.tree_engine.begin() as conn:
        conn.execute(text("DELETE FROM log_node"))


def _rebuild_child(db: str) -> None:
    import resource

    log = _bench_log(db)
    t = time.perf_counter()
    size = log.integrate()
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rebuilt_to": size, "rebuild_s": round(seconds, 1), "peak_rss_mb": round(peak)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--skip-pg", action="store_true")
    ap.add_argument(
        "--only-rebuild", action="store_true", help="run the rebuild section alone, keep the rest"
    )
    ap.add_argument("--rebuild-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rebuild_child:
        _rebuild_child(a.rebuild_child)
        return
    if a.only_rebuild:
        kept = json.loads(RESULTS.read_text())
        kept["rebuild"] = rebuild(a.entries)
        kept["rebuild"]["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print("rebuild", kept["rebuild"], flush=True)
        RESULTS.write_text(json.dumps(kept, indent=2) + "\n")
        return
    from bench.dataset import reset_postgres
    from consent_service.db import migrate

    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "appends": {},
    }
    for sync in ("NORMAL", "FULL"):
        tmp = tempfile.mkdtemp(prefix="audit-append-")
        url = f"sqlite:///{tmp}/a.db"
        migrate(url)
        result["appends"][f"sqlite_synchronous_{sync.lower()}"] = appends(url, synchronous=sync)
        print("appends", sync, result["appends"][f"sqlite_synchronous_{sync.lower()}"], flush=True)
    if not a.skip_pg:
        reset_postgres(PG_URL)
        migrate(PG_URL)
        result["appends"]["postgresql_synchronous_commit_on"] = appends(PG_URL)
        print("appends pg", result["appends"]["postgresql_synchronous_commit_on"], flush=True)
    result["at_scale"] = at_scale(a.entries)
    print("scale", result["at_scale"], flush=True)
    result["rebuild"] = rebuild(a.entries)
    print("rebuild", result["rebuild"], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
