"""pending_vectors: the items a durable vector store (Milvus) has not acknowledged yet

An item's upsert or delete is queued here in the transaction that writes the item, and the row is removed
once the store acknowledged it; a process killed in between leaves the row, and the next writer retries it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_vectors",
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("collection", sa.String(length=64), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("item_id"),
    )
    with op.batch_alter_table("pending_vectors") as batch:
        batch.create_index("ix_pending_vectors_collection", ["collection"])


def downgrade() -> None:
    op.drop_table("pending_vectors")
