"""The `collections` and `spaces` tables: a collection's write generation, the setup it was built with, and
the model and dimension of each of its embedding spaces."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, select, union, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mmrag.store.db import Database
from mmrag.store.models import CollectionRow, Document, Space


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


def update_setup(db: Database, collection: str, changes: dict[str, Any]) -> None:
    """Change some recorded settings (`mmrag reindex --to milvus` records the new backend)."""
    with db.session() as session:
        row = session.get(CollectionRow, collection, with_for_update=True)
        if row is None:
            session.add(CollectionRow(name=collection, generation=0, setup=dict(changes)))
        else:
            row.setup = {**(row.setup or {}), **changes}


def ensure_row(db: Database, collection: str) -> None:
    with db.session() as session:
        if session.get(CollectionRow, collection) is not None:
            return
    try:
        with db.session() as session:
            session.add(CollectionRow(name=collection, generation=0))
    except IntegrityError:  # another process made it meanwhile
        pass


def generation(db: Database, collection: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(select(CollectionRow.generation).where(CollectionRow.name == collection)) or 0
        )


def bump_generation(session: Session, collection: str) -> int:
    """Inside a write transaction: one more generation, committed with the write itself."""
    bumped = session.execute(
        update(CollectionRow)
        .where(CollectionRow.name == collection)
        .values(generation=CollectionRow.generation + 1)
    ).rowcount
    if not bumped:
        session.add(CollectionRow(name=collection, generation=1))
        return 1
    return int(session.scalar(select(CollectionRow.generation).where(CollectionRow.name == collection)))


def space_record(db: Database, collection: str, space: str) -> tuple[str, int] | None:
    """(model id, dimension) the collection's `space` was built with, or None for a new space."""
    with db.session() as session:
        row = session.get(Space, (collection, space))
        return (row.model_id, row.dim) if row is not None else None


def record_space(db: Database, collection: str, space: str, model_id: str, dim: int) -> None:
    try:
        with db.session() as session:
            session.add(Space(collection=collection, name=space, model_id=model_id, dim=dim))
    except IntegrityError:  # another process recorded it meanwhile: its record is checked next time
        pass


def collection_exists(db: Database, name: str) -> bool:
    with db.session() as session:
        return bool(
            session.scalar(
                select(exists().where(Space.collection == name) | exists().where(Document.collection == name))
            )
        )


def collection_names(db: Database) -> list[str]:
    with db.session() as session:
        names = session.scalars(
            union(select(Space.collection), select(Document.collection.label("collection")))
        ).all()
    return sorted(set(names))
