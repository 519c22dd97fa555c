"""The `collections` table: a collection's write generation and the setup it was built with."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from mmrag.store.db import Database
from mmrag.store.models import CollectionRow


def read_setup(db: Database, collection: str) -> dict[str, Any] | None:
    """The setup recorded at the collection's first write; None for a new (or pre-0005) collection."""
    with db.session() as session:
        return session.scalar(select(CollectionRow.setup).where(CollectionRow.name == collection))


def record_setup(db: Database, collection: str, setup: dict[str, Any]) -> bool:
    """Record `setup` unless the collection has one already; True when it was recorded now."""
    with db.session() as session:
        row = session.get(CollectionRow, collection, with_for_update=True)
        if row is None:
            session.add(CollectionRow(name=collection, generation=0, setup=setup))
            return True
        if row.setup is not None:
            return False
        row.setup = setup
        return True
