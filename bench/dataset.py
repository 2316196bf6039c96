"""Builds a consent database of a given size with bulk inserts, for the benchmarks."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import text
from sqlmodel import SQLModel

from consent_service.db import make_engine, migrate
from consent_service.models import new_id

BATCH = 50_000


@dataclass
class Dataset:
    owners: list[tuple[str, str]]  # (id, handle)
    grantees: list[tuple[str, str]]
    granted: list[tuple[int, int]]  # (owner index, grantee index) pairs that are granted
    platform_token: str


def _insert(conn, table: str, rows: list[dict]) -> None:
    tbl = SQLModel.metadata.tables[table]
    for i in range(0, len(rows), BATCH):
        conn.execute(tbl.insert(), rows[i : i + BATCH])


def build(url: str, *, grants: int, grants_per_owner: int = 50, seed: int = 7) -> Dataset:
    """Migrate `url` and fill it with `grants` grants spread over verified cameos."""
    from sqlmodel import Session

    from consent_service.models import PrincipalKind
    from consent_service.services.principals import create_principal

    migrate(url)
    rng = random.Random(seed)
    n_owners = max(1, grants // grants_per_owner)
    n_grantees = max(grants_per_owner * 20, n_owners * 2)
    now = datetime.now(UTC)
    owners = [(new_id(), f"o{i}") for i in range(n_owners)]
    grantees = [(new_id(), f"g{i}") for i in range(n_grantees)]
    people = [
        {
            "id": pid,
            "kind": "user",
            "handle": h,
            "display_name": "",
            "birth_date": date(1990, 1, 1),
            "disabled": False,
            "created_at": now,
        }
        for pid, h in owners + grantees
    ]
    cameos = [
        {
            "id": new_id(),
            "owner_id": pid,
            "state": "verified",
            "audience": "approved",
            "banned_terms": [],
            "instructions": "",
            "created_at": now,
            "updated_at": now,
        }
        for pid, _ in owners
    ]
    granted: list[tuple[int, int]] = []
    grant_rows = []
    for oi, cameo in enumerate(cameos):
        for gi in rng.sample(range(n_grantees), min(grants_per_owner, grants - len(grant_rows))):
            granted.append((oi, gi))
            grant_rows.append(
                {
                    "id": new_id(),
                    "cameo_id": cameo["id"],
                    "grantee_id": grantees[gi][0],
                    "purposes": ["generate"],
                    "expires_at": None,
                    "created_at": now,
                }
            )
        if len(grant_rows) >= grants:
            break
    engine = make_engine(url)
    with engine.begin() as conn:
        _insert(conn, "principal", people)
        _insert(conn, "cameo", cameos)
        _insert(conn, "likeness_grant", grant_rows)
    with Session(engine, expire_on_commit=False) as session:
        token = create_principal(
            session, kind=PrincipalKind.platform, handle="benchplat", created_by=None
        ).token
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    engine.dispose()
    return Dataset(owners=owners, grantees=grantees, granted=granted, platform_token=token)


def reset_postgres(url: str) -> None:
    """Create the benchmark database if needed, and empty its public schema."""
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = make_engine(
        target.set(database="postgres").render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}
        ).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@dataclass
class Sample:
    """A random sample of an existing benchmark database, small enough to hold in memory."""

    granted: list[tuple[str, str]]  # (owner id, grantee id)
    owner_ids: list[str]
    grantee_ids: list[str]
    owner_handle: str
    fresh_grantees: list[str]  # handles with no grant on owner_ids[0]


def sample(url: str, *, n: int) -> Sample:
    """Draw granted pairs and random principals from a database built by `build`."""
    engine = make_engine(url)
    with engine.connect() as conn:
        granted = [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT c.owner_id, g.grantee_id FROM likeness_grant g JOIN cameo c ON c.id = g.cameo_id "
                    "ORDER BY random() LIMIT :n"
                ),
                {"n": n},
            )
        ]
        owners = [
            r[0]
            for r in conn.execute(text("SELECT owner_id FROM cameo ORDER BY random() LIMIT :n"), {"n": n})
        ]
        grantees = [
            r[0]
            for r in conn.execute(
                text("SELECT id FROM principal WHERE handle LIKE 'g%' ORDER BY random() LIMIT :n"), {"n": n}
            )
        ]
        owner_handle = conn.execute(
            text("SELECT handle FROM principal WHERE id = :i"), {"i": owners[0]}
        ).scalar_one()
        fresh = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT p.handle FROM principal p WHERE p.handle LIKE 'g%' AND p.id NOT IN "
                    "(SELECT g.grantee_id FROM likeness_grant g JOIN cameo c ON c.id = g.cameo_id "
                    "WHERE c.owner_id = :o) "
                    "LIMIT 1000"
                ),
                {"o": owners[0]},
            )
        ]
        conn.rollback()
    engine.dispose()
    # Interned, as the service's PrincipalRef interns the ids it hands to the policy.
    granted = [(sys.intern(o), sys.intern(g)) for o, g in granted]
    owners, grantees = [sys.intern(o) for o in owners], [sys.intern(g) for g in grantees]
    return Sample(granted, owners, grantees, owner_handle, fresh)
