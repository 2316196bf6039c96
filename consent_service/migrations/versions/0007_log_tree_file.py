"""the transparency log's tree leaves SQLite databases for a file of its own

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 03:40:00.000000

On SQLite the tree's nodes now live beside the database (audit.log.tree_engine_for),
so inserting them no longer holds the database's one write lock. They are derived
from the entries: the integrator rebuilds them there, checking each step against the
signed checkpoint it ends on, before it signs anything new. PostgreSQL keeps the table.
"""

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
    # Empty: the older code refuses to sign until its tree is back, and it has no rebuild.
    # Copy the tree file's log_node rows into the database after downgrading.
    if op.get_bind().dialect.name == "sqlite":
        op.create_table(
            "log_node",
            sa.Column("level", sa.Integer(), nullable=False),
            sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
            sa.PrimaryKeyConstraint("level", "idx"),
        )
