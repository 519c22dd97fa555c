"""Queries over documents, items and their vectors: the one place they are written, for the collection, the
CLI, the REST routes and calibration alike. Functions that take a `Session` run inside the caller's
transaction; the others open their own."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from mmrag.filters import Filters, is_under
from mmrag.store import lexical
from mmrag.store.db import Database
from mmrag.store.models import Document, Item, ItemVector

if TYPE_CHECKING:
    import numpy as np

VECTOR_DTYPE = (
    "float16"  # numpy dtype of stored vectors, the precision: halves the database; cosine error ~1e-3
)
_IN_CHUNK = 5000  # ids per IN (...) list: SQLite allows 32,766 parameters, PostgreSQL 65,535


def pack_vector(vector: np.ndarray) -> bytes:
    import numpy as np

    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


def unpack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    import numpy as np

    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), dim).astype(np.float32)
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class ItemPayload:
    """What a vector store that filters by itself (Milvus) keeps next to an item's vector."""

    item_id: int
    modality: str
    document_id: int
    path: str
    meta: dict[str, Any]


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield [int(i) for i in ids[start : start + _IN_CHUNK]]


# ---- documents --------------------------------------------------------------------------------------


def documents(db: Database, collection: str) -> list[Document]:
    with db.session() as session:
        return list(
            session.scalars(select(Document).where(Document.collection == collection).order_by(Document.path))
        )


def documents_under(db: Database, collection: str, folders: Sequence[str]) -> list[Document]:
    """The documents at these paths or under these folders."""
    return [d for d in documents(db, collection) if any(is_under(d.path, f) for f in folders)]


def documents_by_path(db: Database, collection: str, paths: Sequence[str]) -> dict[str, Document]:
    """The Document rows of those of `paths` that the collection holds, in a query per chunk of paths
    (a walk of a large library asks for thousands at once, not one by one)."""
    found: dict[str, Document] = {}
    with db.session() as session:
        for part in _chunks_of(paths):
            found.update(
                (doc.path, doc)
                for doc in session.scalars(
                    select(Document).where(Document.collection == collection, Document.path.in_(part))
                )
            )
    return found


def document_in(db: Database, collection: str, document_id: int) -> Document | None:
    """The document with this id, if it belongs to `collection`."""
    with db.session() as session:
        doc = session.get(Document, document_id)
    return doc if doc is not None and doc.collection == collection else None


def document_ids_by_path(db: Database, collection: str, paths: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    with db.session() as session:
        for part in _chunks_of(paths):
            found.update(
                session.execute(
                    select(Document.path, Document.id).where(
                        Document.collection == collection, Document.path.in_(part)
                    )
                ).all()
            )
    return found


def _chunks_of(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield list(values[start : start + _IN_CHUNK])


def list_documents(
    db: Database, collection: str, offset: int, limit: int, status: str | None = None
) -> tuple[int, list[tuple[Document, int]]]:
    """(total, [(document, its item count)]) of one page of a collection's documents, by id."""
    where = [Document.collection == collection]
    if status:
        where.append(Document.status == status)
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Document).where(*where)) or 0
        rows = session.execute(
            select(Document, func.count(Item.id))
            .outerjoin(Item, Item.document_id == Document.id)
            .where(*where)
            .group_by(Document.id)
            .order_by(Document.id)
            .offset(offset)
            .limit(limit)
        ).all()
    return int(total), [(doc, int(count)) for doc, count in rows]


def collection_sizes(db: Database) -> tuple[dict[str, int], dict[str, int]]:
    """Indexed documents and items per collection."""
    with db.session() as session:
        docs = dict(
            session.execute(
                select(Document.collection, func.count())
                .where(Document.status == "indexed")
                .group_by(Document.collection)
            ).all()
        )
        items = dict(session.execute(select(Item.collection, func.count()).group_by(Item.collection)).all())
    return docs, items


def set_metadata(session: Session, collection: str, paths: Sequence[str], meta: dict[str, Any]) -> list[int]:
    """Give these documents new metadata; returns the ids of their items (their payloads changed)."""
    doc_ids: list[int] = []
    for part in _chunks_of(paths):
        for doc in session.scalars(
            select(Document).where(Document.collection == collection, Document.path.in_(part))
        ):
            doc.meta = dict(meta)
            doc_ids.append(doc.id)
    return item_ids_of(session, doc_ids)


def record_failure(
    db: Database,
    collection: str,
    *,
    path: str,
    path_bytes: bytes | None,
    kind: str,
    content_hash: str,
    size: int,
    mtime: float,
    error: str,
) -> None:
    """Remember why a file failed. An earlier good version keeps its items: nothing indexed is lost."""
    with db.session() as session:
        doc = session.scalar(select(Document).where(Document.collection == collection, Document.path == path))
        if doc is None:
            session.add(
                Document(
                    collection=collection,
                    path=path,
                    path_bytes=path_bytes,
                    kind=kind,
                    content_hash=content_hash,
                    size=size,
                    mtime=mtime,
                    status="failed",
                    error=error,
                    meta={},
                )
            )
        else:
            doc.error = error
            if doc.status == "failed":
                doc.content_hash, doc.size, doc.mtime = content_hash, size, mtime


def touch_document(db: Database, document_id: int, mtime: float) -> None:
    with db.session() as session:
        doc = session.get(Document, document_id)
        if doc is not None:
            doc.mtime = mtime


@dataclass
class NewItem:
    """An extracted item ready to be stored: its fields and one vector per space it is indexed in."""

    modality: str
    content_hash: str
    page: int | None = None
    bbox: list[float] | None = None
    text: str | None = None
    thumbnail: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def replace_document(
    session: Session,
    collection: str,
    *,
    path: str,
    path_bytes: bytes | None,
    kind: str,
    content_hash: str,
    size: int,
    mtime: float,
    meta: dict[str, Any] | None,
    items: Sequence[NewItem],
    spaces: Iterable[str],
) -> tuple[Document, list[int], list[int]]:
    """Inside a transaction: the document (new, or its older version's items deleted) and its items with
    their vectors in `spaces`. Returns (document, old item ids, new item ids)."""
    wanted_spaces = set(spaces)
    doc = session.scalar(select(Document).where(Document.collection == collection, Document.path == path))
    old_ids = item_ids_of(session, [doc.id]) if doc is not None else []
    if doc is None:
        doc = Document(collection=collection, path=path)
        session.add(doc)
    elif old_ids:
        session.execute(delete(Item).where(Item.document_id == doc.id))
    doc.kind, doc.content_hash, doc.size, doc.mtime = kind, content_hash, size, mtime
    doc.status, doc.error, doc.meta, doc.path_bytes = "indexed", None, meta or {}, path_bytes
    session.flush()
    rows = [
        Item(
            document_id=doc.id,
            collection=collection,
            modality=it.modality,
            page=it.page,
            bbox=it.bbox,
            text=it.text,
            thumbnail=it.thumbnail,
            content_hash=it.content_hash,
            meta=it.meta,
        )
        for it in items
    ]
    session.add_all(rows)
    session.flush()
    lexical.index_items(  # same transaction: the lexical index never disagrees with the items
        session,
        collection,
        (
            (row.id, it.modality, lexical.lexical_text(it.modality, it.text, it.meta))
            for row, it in zip(rows, items, strict=True)
        ),
    )
    for row, it in zip(rows, items, strict=True):
        session.add_all(
            ItemVector(item_id=row.id, space=space, vector=pack_vector(vec))
            for space, vec in it.vectors.items()
            if space in wanted_spaces
        )
    return doc, old_ids, [row.id for row in rows]


def delete_documents(session: Session, document_ids: Sequence[int]) -> list[int]:
    """Inside a transaction: delete the documents (their items and vectors cascade); returns the item ids."""
    item_ids = item_ids_of(session, document_ids)
    for part in _chunks(list(document_ids)):
        session.execute(delete(Document).where(Document.id.in_(part)))
    return item_ids


def item_ids_of(session: Session, document_ids: Sequence[int]) -> list[int]:
    ids: list[int] = []
    for part in _chunks(list(document_ids)):
        ids.extend(session.scalars(select(Item.id).where(Item.document_id.in_(part))))
    return ids


# ---- items ------------------------------------------------------------------------------------------


def items_by_id(db: Database, collection: str, ids: Iterable[int]) -> dict[int, tuple[Item, Document]]:
    wanted = [int(i) for i in ids]
    if not wanted:
        return {}
    found: dict[int, tuple[Item, Document]] = {}
    with db.session() as session:
        for part in _chunks(wanted):
            rows = session.execute(
                select(Item, Document)
                .join(Document, Document.id == Item.document_id)
                .where(Item.id.in_(part))
            ).all()
            # The collection is checked here, not in SQL: with it in the WHERE clause SQLite (without
            # ANALYZE) scans the (collection, modality) index, 68 ms at 300k rows, instead of 0.6 ms by key.
            found.update({item.id: (item, doc) for item, doc in rows if item.collection == collection})
    return found


def item_with_document(db: Database, item_id: int) -> tuple[Item, Document] | None:
    with db.session() as session:
        item = session.get(Item, item_id)
        doc = session.get(Document, item.document_id) if item is not None else None
    return (item, doc) if item is not None and doc is not None else None


def modality_counts(db: Database, collection: str) -> dict[str, int]:
    with db.session() as session:
        return {
            str(m): int(n)
            for m, n in session.execute(
                select(Item.modality, func.count())
                .where(Item.collection == collection)
                .group_by(Item.modality)
            )
        }


def text_counts_by_modality(session: Session, collection: str) -> dict[str, int]:
    """Inside a transaction: how many of the collection's items of each modality have text."""
    return {
        str(m): int(n)
        for m, n in session.execute(
            select(Item.modality, func.count())
            .where(Item.collection == collection, Item.text.is_not(None))
            .group_by(Item.modality)
        )
    }


def payloads(db: Database, collection: str, ids: Sequence[int]) -> dict[int, ItemPayload]:
    found: dict[int, ItemPayload] = {}
    with db.session() as session:
        for part in _chunks(ids):
            for item_id, modality, doc_id, path, meta, coll in session.execute(
                select(Item.id, Item.modality, Document.id, Document.path, Document.meta, Item.collection)
                .join(Document, Document.id == Item.document_id)
                .where(Item.id.in_(part))
            ):
                if coll == collection:
                    found[item_id] = ItemPayload(item_id, modality, doc_id, path, dict(meta or {}))
    return found


def matching_document_ids(db: Database, collection: str, filters: Filters) -> list[int]:
    """Sorted ids of the collection's indexed documents that `filters` accepts (documents, folders,
    metadata). Metadata is compared in Python, where JSON equality is the same on every database."""
    conditions = [Document.collection == collection, Document.status == "indexed"]
    if filters.document_ids:
        conditions.append(Document.id.in_(sorted(filters.document_ids)))
    if filters.path_prefixes:
        conditions.append(
            or_(
                *(
                    or_(Document.path == p, Document.path.startswith(p.rstrip("/") + "/", autoescape=True))
                    for p in filters.path_prefixes
                )
            )
        )
    with db.session() as session:
        docs = session.execute(select(Document.id, Document.path, Document.meta).where(*conditions)).all()
    return sorted(d for d, path, meta in docs if filters.accepts_document(d, path, meta))


def matching_item_ids(db: Database, collection: str, modality: str, filters: Filters) -> np.ndarray:
    """Sorted ids of the collection's items of `modality` in the documents `filters` accepts."""
    import numpy as np

    wanted = matching_document_ids(db, collection, filters)
    ids: list[int] = []
    with db.session() as session:
        for part in _chunks(wanted):
            ids.extend(
                session.scalars(select(Item.id).where(Item.document_id.in_(part), Item.modality == modality))
            )
    return np.unique(np.asarray(ids, dtype=np.int64))


# ---- vectors ----------------------------------------------------------------------------------------


def vector_modalities(db: Database, collection: str, space: str) -> set[str]:
    with db.session() as session:
        return set(
            session.scalars(
                select(Item.modality)
                .distinct()
                .join(ItemVector, ItemVector.item_id == Item.id)
                .where(Item.collection == collection, ItemVector.space == space)
            )
        )


def vector_ids(db: Database, collection: str, space: str, modality: str) -> np.ndarray:
    """Sorted ids of the items of `modality` with a vector in `space`."""
    import numpy as np

    with db.session() as session:
        rows = session.scalars(
            select(ItemVector.item_id)
            .join(Item, Item.id == ItemVector.item_id)
            .where(Item.collection == collection, ItemVector.space == space, Item.modality == modality)
        ).all()
    return np.unique(np.asarray(rows, dtype=np.int64))


def vector_count(db: Database, collection: str, space: str, modality: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(ItemVector)
                .join(Item, Item.id == ItemVector.item_id)
                .where(Item.collection == collection, ItemVector.space == space, Item.modality == modality)
            )
            or 0
        )


def vectors(db: Database, space: str, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids found, their unit vectors) in `space`; ids deleted meanwhile are left out."""
    import numpy as np

    by_id: dict[int, bytes] = {}
    with db.session() as session:
        for part in _chunks(list(ids)):
            for item_id, blob in session.execute(
                select(ItemVector.item_id, ItemVector.vector).where(
                    ItemVector.space == space, ItemVector.item_id.in_(part)
                )
            ):
                by_id[item_id] = blob
    found = np.asarray([i for i in ids if int(i) in by_id], dtype=np.int64)
    return found, unpack_vectors([by_id[int(i)] for i in found], dim)


def vector_counts_by_space(db: Database, collection: str) -> dict[str, int]:
    with db.session() as session:
        rows = session.execute(
            select(ItemVector.space, func.count())
            .join(Item, Item.id == ItemVector.item_id)
            .where(Item.collection == collection)
            .group_by(ItemVector.space)
        ).all()
    return {space: int(n) for space, n in rows}


def sample_texts(db: Database, collection: str, limit: int = 5000) -> list[str]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Item.text).where(Item.collection == collection, Item.text.is_not(None)).limit(limit)
            )
        )


def sample_vectors(
    db: Database, collection: str, space: str, dim: int, per_modality: int, rng: random.Random
) -> dict[str, np.ndarray]:
    """Up to `per_modality` stored vectors of each modality in one space."""

    out: dict[str, np.ndarray] = {}
    for modality in sorted(vector_modalities(db, collection, space)):
        ids = vector_ids(db, collection, space, modality).tolist()
        chosen = rng.sample(ids, min(len(ids), per_modality))
        with db.session() as session:
            blobs: list[bytes] = []
            for part in _chunks(chosen):
                blobs.extend(
                    session.scalars(
                        select(ItemVector.vector).where(
                            ItemVector.space == space, ItemVector.item_id.in_(part)
                        )
                    )
                )
        out[modality] = unpack_vectors(blobs, dim)
    return out
