"""The operator CLI and the Alembic migrations."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from audit.log import tree_engine_for
from consent_service import cli
from consent_service.db import alembic_config, make_engine, migrate
from tests.conftest import BACKENDS


def assert_schema_matches_models(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    # On SQLite the tree's nodes live in a file of their own (audit.log.tree_engine_for).
    moved = {"log_node"} if url.startswith("sqlite") else set()
    assert [d for d in diff if not (d[0] == "add_table" and d[1].name in moved)] == []
    assert {d[1].name for d in diff if d[0] == "add_table"} == moved


def test_migrations_match_models(db_url):
    assert_schema_matches_models(db_url)


@pytest.fixture(params=BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own, not the shared test schema, for migrating up and down."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    shared = make_url(request.getfixturevalue("pg_migrated"))
    name = f"{shared.database}_migrations"
    admin = make_engine(shared.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield shared.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migrations_go_down_to_nothing_and_up_again(empty_db_url):
    migrate(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "base")
    engine = make_engine(empty_db_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
            if conn.dialect.name == "postgresql":
                # Enum types outlive their tables unless dropped; the next upgrade would collide.
                assert conn.execute(text("SELECT typname FROM pg_type WHERE typtype = 'e'")).all() == []
    finally:
        engine.dispose()
    migrate(empty_db_url)
    assert_schema_matches_models(empty_db_url)


def test_migrators_started_together_take_turns(empty_db_url):
    """Each container runs `consent-admin migrate` before serving; replicas start together."""
    code = "import sys; from consent_service.db import migrate; migrate(sys.argv[1])"
    migrators = [
        subprocess.Popen([sys.executable, "-c", code, empty_db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    failures = [m.communicate(timeout=120)[1] for m in migrators if m.wait(timeout=120) != 0]
    assert failures == []
    assert_schema_matches_models(empty_db_url)


def test_downgrade_below_0007_brings_the_tree_back_into_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/consent.db"
    migrate(url)
    engine = make_engine(url)
    nodes = tree_engine_for(engine)
    rows = [
        {"level": level, "idx": idx, "hash": bytes([level, idx]) * 16} for level in (0, 1) for idx in (0, 1)
    ]
    with nodes.begin() as conn:
        conn.execute(text("INSERT INTO log_node (level, idx, hash) VALUES (:level, :idx, :hash)"), rows)
    nodes.dispose()
    engine.dispose()
    command.downgrade(alembic_config(url), "0006")
    engine = make_engine(url)
    with engine.connect() as conn:
        copied = conn.execute(text("SELECT level, idx, hash FROM log_node ORDER BY level, idx")).all()
    engine.dispose()
    assert [tuple(r) for r in copied] == [(r["level"], r["idx"], r["hash"]) for r in rows]


def test_cli_bootstrap_create_and_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONSENT_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    assert cli.main(["migrate"]) == 0
    assert cli.main(["bootstrap-admin", "--handle", "boss"]) == 0
    out = capsys.readouterr().out
    assert "api key (shown once): csk_" in out
    assert cli.main(["bootstrap-admin"]) == 2  # only the first admin is bootstrapped
    assert cli.main(["create", "platform", "acme"]) == 0
    assert cli.main(["create", "user", "alice", "--birth-date", "1990-01-01"]) == 0
    assert cli.main(["issue-key", "acme"]) == 0
    with pytest.raises(SystemExit):  # only the verification flow verifies a cameo
        cli.main(["set-cameo-state", "alice", "verified"])
    capsys.readouterr()
    assert cli.main(["set-cameo-state", "alice", "suspended"]) == 2  # alice has no cameo yet
    assert "cameo_not_found" in capsys.readouterr().err
    assert cli.main(["create", "user", "alice", "--birth-date", "1990-01-01"]) == 2
    capsys.readouterr()


def test_cli_lists_and_revokes_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONSENT_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    assert cli.main(["migrate"]) == 0
    assert cli.main(["create", "platform", "acme"]) == 0
    token = capsys.readouterr().out.split("(shown once): ")[1].strip()
    key_id = token.split("_")[1]
    assert cli.main(["list-keys", "acme"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"{key_id}  issued") and listed.rstrip().endswith("active")
    assert cli.main(["revoke-key", "acme", key_id]) == 0
    assert cli.main(["list-keys", "acme"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("revoked")
    assert cli.main(["revoke-key", "acme", "0000000000000000"]) == 2
    assert "not_found" in capsys.readouterr().err
