"""The items a durable vector store has not acknowledged yet (table pending_vectors, migration 0009).

A write queues its items' upserts (and the deletes of the items it replaces) in its own transaction; once the
store acknowledges them the rows go. Whatever a killed process left is retried by the next writer.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mmrag.store.db import Database
from mmrag.store.models import Item, PendingVector

UPSERT, DELETE = "upsert", "delete"
_CHUNK = 5000


def queue(session: Session, collection: str, item_ids: Sequence[int], op: str) -> None:
    """Inside the write's transaction. A delete replaces a pending upsert of the same item."""
    for start in range(0, len(item_ids), _CHUNK):
        part = [int(i) for i in item_ids[start : start + _CHUNK]]
        session.execute(delete(PendingVector).where(PendingVector.item_id.in_(part)))
        session.add_all(PendingVector(item_id=i, collection=collection, op=op) for i in part)


def queue_whole_collection(db: Database, collection: str) -> int:
    """Every item of the collection, to be upserted again (moving it to another store)."""
    with db.session() as session:
        ids = list(session.scalars(select(Item.id).where(Item.collection == collection)))
        queue(session, collection, ids, UPSERT)
    return len(ids)


def pending(db: Database, collection: str, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` (item id, op), oldest first."""
    with db.session() as session:
        return [
            (int(i), str(op))
            for i, op in session.execute(
                select(PendingVector.item_id, PendingVector.op)
                .where(PendingVector.collection == collection)
                .order_by(PendingVector.item_id)
                .limit(limit)
            )
        ]


def count(db: Database, collection: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(PendingVector).where(PendingVector.collection == collection)
            )
            or 0
        )


def acknowledge(db: Database, done: Sequence[tuple[int, str]]) -> None:
    """The store applied these operations. A row whose op changed since it was read stays (a delete queued
    after the upsert was read must still be applied)."""
    with db.session() as session:
        for op in (UPSERT, DELETE):
            ids = [i for i, o in done if o == op]
            for start in range(0, len(ids), _CHUNK):
                session.execute(
                    delete(PendingVector).where(
                        PendingVector.item_id.in_(ids[start : start + _CHUNK]), PendingVector.op == op
                    )
                )


def clear(db: Database, collection: str) -> None:
    """Forget the collection's queue (its vectors moved to a store that keeps none)."""
    with db.session() as session:
        session.execute(delete(PendingVector).where(PendingVector.collection == collection))
