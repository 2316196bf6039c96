"""transparency log: sequence numbers and canonical entries on audit rows, Merkle nodes, checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import json
from datetime import UTC

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _canonical(row: sa.Row, seq: int) -> str:
    # A frozen copy of audit.entry.encode_entry as of this revision: a migration
    # must keep producing the same bytes even if that module changes later.
    at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
    details = row.details if isinstance(row.details, dict) else json.loads(row.details or "{}")
    doc = {
        "seq": seq,
        "at": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": row.actor_id,
        "subject": row.subject_id,
        "action": row.action,
        "decision": row.decision,
        "reason": row.reason,
        "revision": row.revision,
        "details": details,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def upgrade() -> None:
    op.create_table(
        "log_checkpoint",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tree_size"),
    )
    op.create_table(
        "log_cosignature",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", "witness"),
    )
    op.create_table(
        "log_counter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("next", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "log_node",
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("entry", sa.Text(), nullable=True))

    # Rows written before the log existed become its first leaves, in id order.
    conn = op.get_bind()
    events = sa.table(
        "audit_event",
        sa.column("id"),
        sa.column("at", sa.DateTime(timezone=True)),
        sa.column("actor_id"),
        sa.column("subject_id"),
        sa.column("action"),
        sa.column("decision"),
        sa.column("reason"),
        sa.column("revision"),
        sa.column("details", sa.JSON),
        sa.column("seq"),
        sa.column("entry"),
    )
    rows = conn.execute(sa.select(events).order_by(events.c.id)).all()
    for seq, row in enumerate(rows):
        conn.execute(events.update().where(events.c.id == row.id).values(seq=seq, entry=_canonical(row, seq)))
    counter = sa.table("log_counter", sa.column("id", sa.Integer), sa.column("next", sa.BigInteger))
    op.bulk_insert(counter, [{"id": 1, "next": len(rows)}])

    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("entry", existing_type=sa.Text(), nullable=False)
        batch_op.create_unique_constraint("uq_audit_event_seq", ["seq"])


def downgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_constraint("uq_audit_event_seq", type_="unique")
        batch_op.drop_column("entry")
        batch_op.drop_column("seq")
    op.drop_table("log_node")
    op.drop_table("log_counter")
    op.drop_table("log_cosignature")
    op.drop_table("log_checkpoint")
