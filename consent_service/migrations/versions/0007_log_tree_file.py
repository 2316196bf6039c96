"""the transparency log's tree leaves SQLite databases for a file of its own

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 03:40:00.000000

On SQLite the tree's nodes now live beside the database (audit.log.tree_engine_for),
so inserting them no longer holds the database's one write lock. They are derived
from the entries: the integrator rebuilds them there, checking each step against the
signed checkpoint it ends on, before it signs anything new. PostgreSQL keeps the table.
"""

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_table("log_node")


def downgrade() -> None:
    # The older code reads the nodes from this table and has no rebuild: it refuses to sign
    # until its tree is back. So the tree file's nodes are copied back in.
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    op.create_table(
        "log_node",
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    tree = _tree_file(bind)
    if tree is None:
        return
    source = sqlite3.connect(f"{tree.as_uri()}?mode=ro", uri=True)
    try:
        try:
            rows = source.execute("SELECT level, idx, hash FROM log_node")
        except sqlite3.OperationalError:  # a tree file that never got its table: nothing to copy
            return
        insert = sa.text("INSERT INTO log_node (level, idx, hash) VALUES (:level, :idx, :hash)")
        while chunk := rows.fetchmany(_COPY_ROWS):
            bind.execute(insert, [{"level": lv, "idx": i, "hash": h} for lv, i, h in chunk])
    finally:
        source.close()


_COPY_ROWS = 10_000


def _tree_file(bind: sa.Connection) -> Path | None:
    """The tree file beside this database, named as audit.log.tree_engine_for names it at 0007."""
    main = next((row[2] for row in bind.exec_driver_sql("PRAGMA database_list") if row[1] == "main"), "")
    if not main:
        return None  # an in-memory database has no file beside it
    path = Path(main)
    tree = path.with_name(f"{path.stem}.tree{path.suffix}")
    return tree if tree.exists() else None
