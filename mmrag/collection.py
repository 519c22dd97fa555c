"""A collection: its rows in the database and one FAISS index per embedding space, kept consistent.

The database is the source of truth and keeps every vector; each index is a cache of it. Writes commit to
the database first, then update the in-memory index; indexes are saved atomically every few files. So a
killed run leaves indexes that lag the database, and `open()` repairs them from it (adds what is missing,
drops what is gone) before anything is searched.

Every write transaction also bumps the collection's generation number (table `collections`). A process
that holds the indexes in memory (`mmrag serve`) compares its generation with the database's before each
search and catches up with writes another process made (`refresh`); a save records the generation the
indexes hold (state.json), never overwrites indexes saved at a newer one, and lets the next `open()` skip
the comparison with the database when nothing was written since.

Each space keeps one index per modality ("clip.image", "clip.text", "text.text", ...). Within CLIP's space a
text query scores every text chunk above every image (the modality gap), so a single index would bury the
images below the search depth; per-modality indexes give each modality its own ranked list to fuse.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from mmrag.embed.base import TextEncoder
from mmrag.errors import IndexCorruptError, MmragError, ModelMismatchError
from mmrag.index.vector_index import VectorIndex
from mmrag.settings import Settings
from mmrag.store import lexical
from mmrag.store.db import Database
from mmrag.store.models import CollectionRow, Document, Item, ItemVector, Space

log = logging.getLogger(__name__)

VECTOR_DTYPE = np.float16  # stored precision: halves the database; cosine error ~1e-3
STATE_FILE = "state.json"  # {"generation": G}: the database generation the saved indexes hold
_LOCK_POLL_S = 0.2


def pack_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=VECTOR_DTYPE).tobytes()


def unpack_vectors(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    arr = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE).reshape(len(blobs), dim).astype(np.float32)
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


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


def index_key(space: str, modality: str) -> str:
    return f"{space}.{modality}"


@dataclass
class RepairReport:
    space: str  # the index key, "space.modality"
    added: int = 0
    removed: int = 0
    rebuilt: bool = False
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.rebuilt or self.added > 0 or self.removed > 0


class CollectionLocked(MmragError):
    pass


class Collection:
    def __init__(
        self, settings: Settings, db: Database, encoders: Sequence[TextEncoder], name: str | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.name = name or settings.collection
        self.encoders = {enc.space: enc for enc in encoders}
        self.dir = settings.index_dir(self.name)
        self.indexes: dict[str, VectorIndex] = {}  # by index_key(space, modality)
        self.dims: dict[str, int] = {}  # per space, from the collection's record (set by open)
        self._unsaved: set[str] = set()  # index keys changed in memory since they were loaded or saved
        self.generation = 0  # the database generation the in-memory indexes hold
        # In-process writes and refreshes, one at a time: a refresh must never add an item that a write
        # of this process has committed but not yet added to its index.
        self._sync = threading.RLock()
        self._writer_mutex = threading.Lock()  # the file lock, held by one thread of this process
        self._writer_thread: int | None = None

    # ---- opening and repair -------------------------------------------------------------------------

    def open(self) -> list[RepairReport]:
        """Check each space's model against what the collection was built with, load its index, repair it.

        When the saved indexes hold the database's current generation and as many items as the database,
        they are trusted as they are (a sha256-checked file of a save made after every write up to it);
        otherwise they are compared with the database item by item."""
        self._ensure_row()
        db_generation = self._db_generation()
        trusted = self._saved_generation() == db_generation
        reports = []
        for space, encoder in self.encoders.items():
            dim = self._check_space(space, encoder)
            on_disk = {p.name.partition(".")[2] for p in self.dir.glob(f"{space}.*") if p.is_dir()}
            for modality in sorted(on_disk | self._db_modalities(space)):
                reports.append(self._load_and_repair(space, modality, encoder.model_id, dim, trusted))
        self.generation = db_generation
        if any(report.changed for report in reports):
            self.save_if_unlocked()
        return reports

    def refresh(self) -> bool:
        """Catch up with writes another process made since this one loaded (or last refreshed) its
        indexes: one query when nothing changed. True when the indexes changed."""
        if self._db_generation() == self.generation:
            return False
        with self._sync:
            current = self._db_generation()  # read before comparing: the comparison sees at least this
            if current == self.generation:
                return False
            changed = False
            for space in self.encoders:
                for modality in sorted(self._db_modalities(space) | set(self.modalities(space))):
                    key = index_key(space, modality)
                    report = self._repair(
                        self._index_for(space, modality), RepairReport(key), space, modality
                    )
                    changed |= report.changed
            log.info("collection %s: caught up with generation %d", self.name, current)
            self.generation = current
        return changed

    def _ensure_row(self) -> None:
        with self.db.session() as session:
            if session.get(CollectionRow, self.name) is not None:
                return
        try:
            with self.db.session() as session:
                session.add(CollectionRow(name=self.name, generation=0))
        except IntegrityError:  # another process made it meanwhile
            pass

    def _db_generation(self) -> int:
        with self.db.session() as session:
            return int(
                session.scalar(select(CollectionRow.generation).where(CollectionRow.name == self.name)) or 0
            )

    def _saved_generation(self) -> int | None:
        try:
            return int(json.loads((self.dir / STATE_FILE).read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _bump_generation(self, session: Any) -> int:
        """Inside a write transaction: one more generation, committed with the write itself."""
        bumped = session.execute(
            update(CollectionRow)
            .where(CollectionRow.name == self.name)
            .values(generation=CollectionRow.generation + 1)
        ).rowcount
        if not bumped:
            session.add(CollectionRow(name=self.name, generation=1))
            return 1
        return int(session.scalar(select(CollectionRow.generation).where(CollectionRow.name == self.name)))

    def _applied(self, generation: int) -> None:
        """A write of this process is in the indexes: they hold `generation`, unless another process wrote
        in between (then the next refresh compares them with the database)."""
        if generation == self.generation + 1:
            self.generation = generation

    def _db_modalities(self, space: str) -> set[str]:
        with self.db.session() as session:
            return set(
                session.scalars(
                    select(Item.modality)
                    .distinct()
                    .join(ItemVector, ItemVector.item_id == Item.id)
                    .where(Item.collection == self.name, ItemVector.space == space)
                )
            )

    def modalities(self, space: str) -> list[str]:
        # list() snapshots the keys in one step: a writer thread may add an index meanwhile (the service)
        return sorted(key.partition(".")[2] for key in list(self.indexes) if key.partition(".")[0] == space)

    def _index_for(self, space: str, modality: str) -> VectorIndex:
        key = index_key(space, modality)
        if key not in self.indexes:
            model_id = self.encoders[space].model_id
            self.indexes[key] = VectorIndex.create(key, model_id, self.dims[space], self.settings.index)
            self._unsaved.add(key)
        return self.indexes[key]

    def _check_space(self, space: str, encoder: TextEncoder) -> int:
        """The space's dimension, from the collection's record: the model is loaded only to build a new
        space (commands that embed nothing load no model). A collection built with another model is
        refused with both names."""
        with self.db.session() as session:
            row = session.get(Space, (self.name, space))
            if row is not None and row.model_id != encoder.model_id:
                raise ModelMismatchError(
                    f"collection {self.name!r} ({space} space) was built with model {row.model_id} "
                    f"(dim {row.dim}); the configured model is {encoder.model_id}. Configure the model "
                    "the collection was built with, or index into another collection (--collection) or "
                    "data dir."
                )
            dim = row.dim if row is not None else None
        if dim is None:
            dim = encoder.dim
            try:
                with self.db.session() as session:
                    session.add(Space(collection=self.name, name=space, model_id=encoder.model_id, dim=dim))
            except IntegrityError:  # another process recorded it meanwhile: its record is checked next time
                pass
        self.dims[space] = dim
        return dim

    def _load_and_repair(
        self, space: str, modality: str, model_id: str, dim: int, trusted: bool = False
    ) -> RepairReport:
        key = index_key(space, modality)
        directory = self.dir / key
        report = RepairReport(key)
        index: VectorIndex | None = None
        if VectorIndex.exists(directory):
            try:
                index = VectorIndex.load(
                    directory, self.settings.index, expected_model_id=model_id, expected_dim=dim
                )
            except IndexCorruptError as exc:
                log.warning("index %s is unusable (%s); rebuilding it from the database", directory, exc)
                report.rebuilt, report.reason = True, str(exc)
        if index is not None and trusted and len(index) == self._db_count(space, modality):
            self.indexes[key] = index  # saved at the database's generation, and no row went behind its back
            return report
        if index is None:
            index = VectorIndex.create(key, model_id, dim, self.settings.index)
            self._unsaved.add(key)
        self.indexes[key] = index
        self._repair(index, report, space, modality)
        if report.changed and not report.rebuilt:
            log.warning(
                "index %s lagged the database: added %d, removed %d", directory, report.added, report.removed
            )
        return report

    def _repair(self, index: VectorIndex, report: RepairReport, space: str, modality: str) -> RepairReport:
        """Make `index` hold exactly the database's items of (space, modality)."""
        db_ids = self._db_ids(space, modality)
        present = index.ids()
        extra = np.setdiff1d(present, db_ids, assume_unique=True)
        missing = np.setdiff1d(db_ids, present, assume_unique=True)
        if extra.size:
            report.removed = index.remove(extra)
        for chunk in np.array_split(missing, max(1, int(np.ceil(missing.size / 20_000)))):
            if chunk.size:
                found, vectors = self._db_vectors(space, chunk, index.dim)
                if found.size:
                    index.add(found, vectors)
                report.added += int(found.size)
        if report.changed:
            self._unsaved.add(report.space)
        return report

    def optimise(self) -> list[str]:
        """Rebuild flat indexes that have grown past `index.ivf_min_items` as IVF (and back when shrunk)."""
        rebuilt = []
        threshold = self.settings.index.ivf_min_items
        for key, index in self.indexes.items():
            is_flat = index.manifest.index_type == "flat"
            if is_flat == (len(index) >= threshold):
                space, _, modality = key.partition(".")
                ids = self._db_ids(space, modality)
                index.rebuild(*self._db_vectors(space, ids, self.dims[space]))
                rebuilt.append(key)
                self._unsaved.add(key)
        return rebuilt

    def save_if_unlocked(self) -> None:
        """A reader repairs in memory; it saves only when no writer holds the collection (the writer's own
        saves would otherwise race with ours)."""
        try:
            with self.writer():
                self.save()
        except CollectionLocked:
            log.info("collection %s is being written; repaired index kept in memory only", self.name)

    def _db_count(self, space: str, modality: str) -> int:
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(ItemVector)
                    .join(Item, Item.id == ItemVector.item_id)
                    .where(Item.collection == self.name, ItemVector.space == space, Item.modality == modality)
                )
                or 0
            )

    def _db_ids(self, space: str, modality: str) -> np.ndarray:
        with self.db.session() as session:
            rows = session.scalars(
                select(ItemVector.item_id)
                .join(Item, Item.id == ItemVector.item_id)
                .where(Item.collection == self.name, ItemVector.space == space, Item.modality == modality)
            ).all()
        return np.unique(np.asarray(rows, dtype=np.int64))

    def _db_vectors(self, space: str, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        by_id: dict[int, bytes] = {}
        with self.db.session() as session:
            for start in range(0, ids.size, 5000):
                part = [int(i) for i in ids[start : start + 5000]]
                for item_id, blob in session.execute(
                    select(ItemVector.item_id, ItemVector.vector).where(
                        ItemVector.space == space, ItemVector.item_id.in_(part)
                    )
                ):
                    by_id[item_id] = blob
        # another process may have deleted some of `ids` since they were read: keep those still there
        found = np.asarray([i for i in ids if int(i) in by_id], dtype=np.int64)
        return found, unpack_vectors([by_id[int(i)] for i in found], dim)

    # ---- writes ---------------------------------------------------------------------------------------

    @contextmanager
    def writer(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive write access across processes (two writers on one collection would race), waiting up
        to `wait_s` seconds for another writer to finish; raises CollectionLocked after that. Re-entrant in
        the thread that holds it. Writes start from what the database holds (a refresh first)."""
        if self._writer_thread == threading.get_ident():
            yield
            return
        deadline = time.monotonic() + wait_s
        if not self._writer_mutex.acquire(timeout=wait_s if wait_s > 0 else -1, blocking=wait_s > 0):
            raise CollectionLocked(f"collection {self.name!r} is being written by another thread")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise CollectionLocked(
                                f"collection {self.name!r} is being written by another process "
                                f"(lock {self.dir / '.lock'})"
                            ) from None
                        time.sleep(_LOCK_POLL_S)
                self._writer_thread = threading.get_ident()
                self.refresh()
                yield
            finally:
                self._writer_thread = None
                os.close(fd)  # closing releases the lock
        finally:
            self._writer_mutex.release()

    def replace_document(
        self,
        *,
        path: str,
        path_bytes: bytes | None = None,
        kind: str,
        content_hash: str,
        size: int,
        mtime: float,
        items: Sequence[NewItem],
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Store a document and its items in one transaction (replacing an older version), then index them.
        `path` is printable; `path_bytes` the file system's name where that had to escape bytes."""
        # one at a time with this process's refreshes, which must not see the commit before the index has it
        with self._sync:
            with self.db.session() as session:
                doc = session.scalar(
                    select(Document).where(Document.collection == self.name, Document.path == path)
                )
                old_ids = self._item_ids(session, doc.id) if doc is not None else []
                if doc is None:
                    doc = Document(collection=self.name, path=path)
                    session.add(doc)
                elif old_ids:
                    session.execute(delete(Item).where(Item.document_id == doc.id))
                doc.kind, doc.content_hash, doc.size, doc.mtime = kind, content_hash, size, mtime
                doc.status, doc.error, doc.meta, doc.path_bytes = "indexed", None, meta or {}, path_bytes
                session.flush()
                rows = [
                    Item(
                        document_id=doc.id,
                        collection=self.name,
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
                    self.name,
                    (
                        (row.id, it.modality, lexical.lexical_text(it.modality, it.text, it.meta))
                        for row, it in zip(rows, items, strict=True)
                    ),
                )
                for row, it in zip(rows, items, strict=True):
                    session.add_all(
                        ItemVector(item_id=row.id, space=space, vector=pack_vector(vec))
                        for space, vec in it.vectors.items()
                        if space in self.encoders
                    )
                new_ids = [row.id for row in rows]
                doc_id = doc.id
                generation = self._bump_generation(session)
            self._unindex(old_ids)
            grouped: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
            for item_id, it in zip(new_ids, items, strict=True):
                for space, vec in it.vectors.items():
                    if space in self.encoders:
                        grouped.setdefault((space, it.modality), []).append((item_id, vec))
            for (space, modality), pairs in grouped.items():
                ids = np.asarray([p[0] for p in pairs], dtype=np.int64)
                self._index_for(space, modality).add(ids, np.stack([p[1] for p in pairs]))
                self._unsaved.add(index_key(space, modality))
            self._applied(generation)
        return doc_id

    def record_failure(
        self,
        *,
        path: str,
        path_bytes: bytes | None = None,
        kind: str,
        content_hash: str,
        size: int,
        mtime: float,
        error: str,
    ) -> None:
        """Remember why a file failed. An earlier good version keeps its items: nothing indexed is lost."""
        with self.db.session() as session:
            doc = session.scalar(
                select(Document).where(Document.collection == self.name, Document.path == path)
            )
            if doc is None:
                session.add(
                    Document(
                        collection=self.name,
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

    def touch_document(self, doc_id: int, mtime: float) -> None:
        with self.db.session() as session:
            doc = session.get(Document, doc_id)
            if doc is not None:
                doc.mtime = mtime

    def delete_documents(self, doc_ids: Iterable[int]) -> int:
        ids = list(doc_ids)
        if not ids:
            return 0
        with self._sync:
            with self.db.session() as session:
                item_ids = []
                for doc_id in ids:
                    item_ids.extend(self._item_ids(session, doc_id))
                session.execute(delete(Document).where(Document.id.in_(ids)))
                generation = self._bump_generation(session)
            self._unindex(item_ids)
            self._applied(generation)
        return len(ids)

    def _item_ids(self, session: Any, doc_id: int) -> list[int]:
        return list(session.scalars(select(Item.id).where(Item.document_id == doc_id)).all())

    def _unindex(self, item_ids: Sequence[int]) -> None:
        if item_ids:
            arr = np.asarray(item_ids, dtype=np.int64)
            for key, index in self.indexes.items():
                if index.remove(arr):
                    self._unsaved.add(key)

    def save(self) -> None:
        """Save every index, then the generation they hold. Indexes saved by another process at a newer
        generation are never overwritten with older ones (this process refreshes first, next time)."""
        with self._sync:
            generation = self.generation
            saved = self._saved_generation()
            if saved is not None and saved > generation:
                log.warning(
                    "collection %s: not saving indexes at generation %d over newer ones (%d) on disk",
                    self.name, generation, saved,
                )  # fmt: skip
                return
            for key in sorted(self._unsaved):  # an unchanged index is not written again (1M items: 2 GB)
                self.indexes[key].save(self.dir / key)
            self._unsaved.clear()
            if saved != generation:
                state = self.dir / STATE_FILE
                tmp = state.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"generation": generation}))
                os.replace(tmp, state)

    # ---- reads ----------------------------------------------------------------------------------------

    def documents(self) -> list[Document]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(Document).where(Document.collection == self.name).order_by(Document.path)
                )
            )

    def document_by_path(self, path: str) -> Document | None:
        with self.db.session() as session:
            return session.scalar(
                select(Document).where(Document.collection == self.name, Document.path == path)
            )

    def items_by_id(self, ids: Iterable[int]) -> dict[int, tuple[Item, Document]]:
        wanted = [int(i) for i in ids]
        if not wanted:
            return {}
        with self.db.session() as session:
            rows = session.execute(
                select(Item, Document)
                .join(Document, Document.id == Item.document_id)
                .where(Item.id.in_(wanted))
            ).all()
        # The collection is checked here, not in SQL: with it in the WHERE clause SQLite (without ANALYZE)
        # scans the (collection, modality) index, 68 ms at 300k rows, instead of 0.6 ms by primary key.
        return {item.id: (item, doc) for item, doc in rows if item.collection == self.name}

    def search(self, space: str, modality: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(queries).astype(np.float32)
        index = self.indexes.get(index_key(space, modality))
        if index is None:  # nothing of this modality indexed yet
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        return index.search(queries, k)
