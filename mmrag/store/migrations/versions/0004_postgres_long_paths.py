"""PostgreSQL: documents with paths longer than a btree index entry can hold

A btree entry holds at most ~2700 bytes, so on PostgreSQL the unique (collection, path) constraint refused
any document whose (incompressible) path is longer; SQLite has no such limit, and Linux paths reach 4096
bytes. Uniqueness moves to (collection, md5(path)), and lookups by path use a hash index, which stores only
a hash of the value and so has no size limit. Nothing changes on other databases.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _is_postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    if not _is_postgres():
        return
    op.drop_constraint("uq_documents_collection_path", "documents", type_="unique")
    op.create_index(
        "uq_documents_collection_path", "documents", ["collection", sa.text("md5(path)")], unique=True
    )
    op.create_index("ix_documents_path_hash", "documents", ["path"], postgresql_using="hash")


def downgrade() -> None:
    if not _is_postgres():
        return
    op.drop_index("ix_documents_path_hash", table_name="documents")
    op.drop_index("uq_documents_collection_path", table_name="documents")
    op.create_unique_constraint("uq_documents_collection_path", "documents", ["collection", "path"])
