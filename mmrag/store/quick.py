"""Read-only lookups in the embedded SQLite database through Python's own sqlite3, for the two commands a
user expects at once: `mmrag stats` and an `mmrag index` that finds nothing changed (mmrag.quick).

Importing SQLAlchemy and mapping the tables costs about 0.5 s, as much as starting the CLI itself, and
these commands need a handful of SELECTs. Everything else, and every write, goes through SQLAlchemy
(mmrag.store's other modules); these lookups are used only on a database at the schema revision this
version of mmrag makes (`head_revision`), and tests/test_quick.py checks them against the full path.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.store.revision import head_revision

_CHUNK = 500  # paths per IN (...): well under SQLite's limit on bound parameters


@dataclass(frozen=True)
class DocumentRow:
    """The columns of a Document row that the plan and `mmrag stats` read."""

    id: int
    path: str
    status: str
    error: str | None
    size: int
    mtime: float
    content_hash: str


class QuickReads:
    """One read-only connection to an SQLite database file at the current schema revision, reading one
    snapshot of it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    @classmethod
    def open(cls, path: Path) -> QuickReads | None:
        """None when the file is missing or unreadable, or its schema is not the newest (the full path
        migrates it or says what is wrong)."""
        if not path.is_file():
            return None
        try:
            # mode=ro: never creates, never writes; a WAL database is read as the full path reads it
            connection = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return None
        reads = cls(connection)
        try:
            # one read transaction: every lookup sees the same commit (WAL keeps it while writers go on)
            connection.execute("BEGIN")
            revision = reads._one("SELECT version_num FROM alembic_version")
        except sqlite3.Error:
            revision = None
        if revision is None or revision[0] != head_revision():
            reads.close()
            return None
        return reads

    def close(self) -> None:
        self._connection.close()

    def renew(self) -> None:
        """Read the newest commit from here on (a new snapshot)."""
        self._connection.execute("COMMIT")
        self._connection.execute("BEGIN")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._connection.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        yield from self._connection.execute(sql, params)

    # ---- the collection ---------------------------------------------------------------------------------

    def generation(self, collection: str) -> int | None:
        """The collection's write generation; None when it has no row yet."""
        row = self._one("SELECT generation FROM collections WHERE name = ?", (collection,))
        return int(row[0]) if row is not None else None

    def setup(self, collection: str) -> dict[str, Any] | None:
        row = self._one("SELECT setup FROM collections WHERE name = ?", (collection,))
        return json.loads(row[0]) if row is not None and row[0] is not None else None

    def spaces(self, collection: str) -> dict[str, tuple[str, int]]:
        """space -> (model id, dimension), as recorded at the space's first write."""
        sql = "SELECT name, model_id, dim FROM spaces WHERE collection = ?"
        return {name: (model_id, int(dim)) for name, model_id, dim in self._all(sql, (collection,))}

    # ---- documents and items ----------------------------------------------------------------------------

    _DOCUMENT_COLUMNS = "id, path, status, error, size, mtime, content_hash"

    def documents(self, collection: str) -> list[DocumentRow]:
        sql = f"SELECT {self._DOCUMENT_COLUMNS} FROM documents WHERE collection = ? ORDER BY path"
        return [DocumentRow(*row) for row in self._all(sql, (collection,))]

    def documents_by_path(self, collection: str, paths: Sequence[str]) -> dict[str, DocumentRow]:
        found: dict[str, DocumentRow] = {}
        for start in range(0, len(paths), _CHUNK):
            part = list(paths[start : start + _CHUNK])
            marks = ", ".join("?" * len(part))
            sql = f"SELECT {self._DOCUMENT_COLUMNS} FROM documents WHERE collection = ? AND path IN ({marks})"
            found.update((row[1], DocumentRow(*row)) for row in self._all(sql, [collection, *part]))
        return found

    def modality_counts(self, collection: str) -> dict[str, int]:
        sql = "SELECT modality, count(*) FROM items WHERE collection = ? GROUP BY modality"
        return {str(modality): int(n) for modality, n in self._all(sql, (collection,))}

    def vector_counts(self, collection: str) -> dict[tuple[str, str], int]:
        """(space, modality) -> how many of the collection's items have a vector there."""
        sql = (
            "SELECT v.space, i.modality, count(*) FROM item_vectors AS v JOIN items AS i ON i.id = v.item_id "
            "WHERE i.collection = ? GROUP BY v.space, i.modality"
        )
        return {(space, modality): int(n) for space, modality, n in self._all(sql, (collection,))}
