"""Alembic environment: migrations run against the URL set by consent_service.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from consent_service import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from consent_service.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
