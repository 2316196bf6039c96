"""The operator CLI and the Alembic migrations."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from consent_service import cli
from consent_service.db import make_engine


def test_migrations_match_models(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    # On SQLite the tree's nodes live in a file of their own (audit.log.tree_engine_for).
    moved = {"log_node"} if db_url.startswith("sqlite") else set()
    assert [d for d in diff if not (d[0] == "add_table" and d[1].name in moved)] == []
    assert {d[1].name for d in diff if d[0] == "add_table"} == moved


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
