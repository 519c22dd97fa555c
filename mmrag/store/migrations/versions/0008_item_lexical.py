"""item_lexical: the lexical (BM25) index of item text, beside the items it describes

SQLite: an FTS5 table (porter stemming over unicode61), rowid = item id, and a trigger that deletes an item's
row whenever the item goes (also through the ON DELETE CASCADE from its document). PostgreSQL: a table with
a tsvector ('english': stemming and stopwords) and its token count, a GIN index, and a foreign key that
cascades. Rows are written by mmrag.store.lexical in the transaction that writes the items. Items that exist
already are indexed here from their text. A SQLite built without FTS5 gets no table: lexical search is then
off (mmrag.store.lexical says why, once).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept here, not imported: a migration must not change when the module it came from does.
_SQLITE_TOKENIZER = "porter unicode61 remove_diacritics 2"
_POSTGRES_CONFIG = "english"


def _sqlite_has_fts5(bind: sa.Connection) -> bool:
    return bool(bind.exec_driver_sql("SELECT sqlite_compileoption_used('ENABLE_FTS5')").scalar())


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        if not _sqlite_has_fts5(bind):
            return
        op.execute(
            "CREATE VIRTUAL TABLE item_lexical USING fts5("
            f"text, collection UNINDEXED, modality UNINDEXED, tokenize = '{_SQLITE_TOKENIZER}')"
        )
        op.execute(
            "CREATE TRIGGER item_lexical_delete AFTER DELETE ON items "
            "BEGIN DELETE FROM item_lexical WHERE rowid = old.id; END"
        )
        op.execute(
            "INSERT INTO item_lexical (rowid, text, collection, modality) "
            "SELECT id, text, collection, modality FROM items WHERE trim(coalesce(text, '')) != ''"
        )
    elif bind.dialect.name == "postgresql":
        op.execute(
            "CREATE TABLE item_lexical ("
            "item_id BIGINT PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE, "
            "collection VARCHAR(64) NOT NULL, modality VARCHAR(16) NOT NULL, "
            "tsv TSVECTOR NOT NULL, length INTEGER NOT NULL)"
        )
        op.execute("CREATE INDEX ix_item_lexical_tsv ON item_lexical USING gin (tsv)")
        op.execute("CREATE INDEX ix_item_lexical_collection ON item_lexical (collection, modality)")
        op.execute(
            "INSERT INTO item_lexical (item_id, collection, modality, tsv, length) "
            f"SELECT i.id, i.collection, i.modality, v.tsv, "
            "(SELECT coalesce(sum(array_length(u.positions, 1)), 0) FROM unnest(v.tsv) u) "
            f"FROM items i CROSS JOIN LATERAL (SELECT to_tsvector('{_POSTGRES_CONFIG}', i.text) AS tsv) v "
            "WHERE trim(coalesce(i.text, '')) != ''"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS item_lexical_delete")
    op.execute("DROP TABLE IF EXISTS item_lexical")
