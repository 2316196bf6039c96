"""audit journal: how far each journal file of consent-check audit rows has been ingested

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 08:00:00.000000

On SQLite a consent check's audit rows go to a journal file first and reach
audit_event in bulk (consent_service/audit_journal.py); this table records, in the
same transaction as the rows, how much of each file is in. Stop the service before
downgrading: a clean stop takes every journal in.
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_journal",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("consumed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("audit_journal")
