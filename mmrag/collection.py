"""A collection: its rows in the database and its vectors in a vector store, kept consistent.

The database is the source of truth and keeps every vector. Writes commit to the database first, then go to
the store (mmrag.index.base: FAISS files or Milvus, `index.backend`). What keeps the two in step depends on
the kind of store:

- a cache (FAISS): a killed run leaves indexes that lag the database, and `open()` repairs them from it
  (adds what is missing, drops what is gone) before anything is searched. Every write transaction bumps the
  collection's generation number (table `collections`); a process that holds the indexes in memory
  (`mmrag serve`) compares its generation with the database's before each search and catches up with writes
  another process made (`refresh`); a save records the generation the indexes hold, and an open trusts
  saved indexes when that generation and the item counts match the database.
- durable storage (Milvus): each write queues its items' upserts and deletes in the database in the same
  transaction (store/pending.py), and an item's queue entry is removed only once the store acknowledged it.
  The next writer retries what a killed process left; an open that finds the store's counts differing from
  the database's compares them item by item. Readers need no refresh: every process searches the same store.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmrag.embed.base import TextEncoder
from mmrag.errors import MmragError, ModelMismatchError
from mmrag.filters import Filters
from mmrag.index.base import IndexInfo, VectorStore, Where, index_key, open_store, split_key
from mmrag.settings import Settings
from mmrag.store import collections as collection_rows
from mmrag.store import items as rows
from mmrag.store import lexical, pending
from mmrag.store.db import Database
from mmrag.store.items import NewItem, pack_vector, unpack_vectors
from mmrag.store.models import Document, Item

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "Collection",
    "CollectionLocked",
    "NewItem",
    "RepairReport",
    "index_key",
    "pack_vector",
    "unpack_vectors",
]

_LOCK_POLL_S = 0.2
_DRAIN_BATCH = 2000
_REPAIR_CHUNK = 20_000


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
        self,
        settings: Settings,
        db: Database,
        encoders: Sequence[TextEncoder],
        name: str | None = None,
        store: VectorStore | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.name = name or settings.collection
        self.encoders = {enc.space: enc for enc in encoders}
        self.dir = settings.index_dir(self.name)  # the writer's lock file and the calibration live here
        self.store = store or open_store(settings, self.name)
        self.dims: dict[str, int] = {}  # per space, from the collection's record (set by open)
        self.generation = 0  # the database generation the store is known to hold
        # In-process writes and refreshes, one at a time: a refresh must never add an item that a write
        # of this process has committed but not yet added to its index.
        self._sync = threading.RLock()
        self._writer_mutex = threading.Lock()  # the file lock, held by one thread of this process
        self._writer_thread: int | None = None

    # ---- opening and repair -------------------------------------------------------------------------

    def open(self) -> list[RepairReport]:
        """Check each space's model against what the collection was built with, open the store, and make it
        agree with the database (a cache: repaired; durable storage: what is pending retried)."""
        collection_rows.ensure_row(self.db, self.name)
        db_generation = collection_rows.generation(self.db, self.name)
        models = {
            space: (enc.model_id, self._check_space(space, enc)) for space, enc in self.encoders.items()
        }
        self.store.rebuild_source = self._database_vectors  # a cache's index found unreadable when loaded
        reports = {
            opened.key: RepairReport(opened.key, rebuilt=bool(opened.problem), reason=opened.problem)
            for opened in self.store.open(models)
        }
        stale_state = False  # a cache saved at another generation than the database's
        if self.store.durable:
            try:
                with self.writer():  # compared and retried by one process at a time
                    self._sync_all(reports, trusted=False)
            except CollectionLocked:
                log.info("collection %s is being written; its writer keeps the store in step", self.name)
        else:
            saved = self.store.saved_generation()
            stale_state = saved is not None and saved != db_generation
            self._sync_all(reports, trusted=saved == db_generation)
            for key, why in self.store.rebuilt_on_load.items():  # unreadable when compared: rebuilt
                reports[key] = RepairReport(key, rebuilt=True, reason=why)
            self.store.rebuilt_on_load.clear()
        self.generation = db_generation
        # A cache that was compared with the database is saved as holding its generation (when nothing
        # changed, only state.json is written): the next open trusts it, and `mmrag stats` reads it quickly
        if not self.store.durable and (stale_state or any(report.changed for report in reports.values())):
            self.save_if_unlocked()
        return [reports[key] for key in sorted(reports)]

    def resync(self) -> list[RepairReport]:
        """As the writer: compare every index with the database (counts, then ids where they differ), apply
        what is pending, and save."""
        reports: dict[str, RepairReport] = {}
        with self.writer():
            self._sync_all(reports, trusted=True)
            self.save()
        return [reports[key] for key in sorted(reports)]

    def _sync_all(self, reports: dict[str, RepairReport], trusted: bool) -> None:
        if self.store.durable:
            self._drain()
        for key in self._all_keys():
            space, modality = split_key(key)
            report = reports.setdefault(key, RepairReport(key))
            self.store.ensure(key, self.encoders[space].model_id, self.dims[space])
            checkable = not report.rebuilt and (trusted or self.store.durable)
            if checkable and self.store.count(key) == rows.vector_count(self.db, self.name, space, modality):
                continue  # nothing went behind the store's back
            self._reconcile(key, report)
            if report.changed and not report.rebuilt:
                log.warning(
                    "the %s index of collection %s lagged the database: added %d, removed %d",
                    key, self.name, report.added, report.removed,
                )  # fmt: skip

    def _all_keys(self) -> list[str]:
        keys = set(self.store.index_keys())
        for space in self.encoders:
            keys |= {index_key(space, m) for m in rows.vector_modalities(self.db, self.name, space)}
        return sorted(k for k in keys if split_key(k)[0] in self.encoders)

    def refresh(self) -> bool:
        """Catch up with writes another process made since this one last looked: one query when nothing
        changed. True when the collection changed. A cache compares itself with the database again; a
        durable store is shared: only indexes another process created are looked up."""
        if collection_rows.generation(self.db, self.name) == self.generation:
            return False
        with self._sync:
            current = collection_rows.generation(
                self.db, self.name
            )  # read first: the repair sees at least this
            if current == self.generation:
                return False
            for key in self._all_keys():  # a durable store: indexes another process created
                space, _ = split_key(key)
                self.store.ensure(key, self.encoders[space].model_id, self.dims[space])
                if not self.store.durable:
                    self._reconcile(key, RepairReport(key))
            log.info("collection %s: caught up with generation %d", self.name, current)
            self.generation = current
        return True

    def _applied(self, generation: int) -> None:
        """A write of this process is in the store: it holds `generation`, unless another process wrote in
        between (then the next refresh compares the store with the database)."""
        if generation == self.generation + 1:
            self.generation = generation

    def modalities(self, space: str) -> list[str]:
        return sorted(split_key(key)[1] for key in self.store.index_keys() if split_key(key)[0] == space)

    def index_keys(self) -> list[str]:
        return self.store.index_keys()

    def describe(self) -> dict[str, IndexInfo]:
        """What each index holds and how it is built (for `mmrag stats`, the service and the bench)."""
        return {key: self.store.describe(key) for key in self.store.index_keys()}

    def _check_space(self, space: str, encoder: TextEncoder) -> int:
        """The space's dimension, from the collection's record: the model is loaded only to build a new
        space (commands that embed nothing load no model). A collection built with another model is
        refused with both names."""
        record = collection_rows.space_record(self.db, self.name, space)
        if record is not None and record[0] != encoder.model_id:
            raise ModelMismatchError(
                f"collection {self.name!r} ({space} space) was built with model {record[0]} "
                f"(dim {record[1]}); the configured model is {encoder.model_id}. Configure the model "
                "the collection was built with, or index into another collection (--collection) or "
                "data dir."
            )
        if record is not None:
            dim = record[1]
        else:
            dim = encoder.dim
            collection_rows.record_space(self.db, self.name, space, encoder.model_id, dim)
        self.dims[space] = dim
        return dim

    def _reconcile(self, key: str, report: RepairReport) -> RepairReport:
        """Make the store's index `key` hold exactly the database's items of that space and modality."""
        import numpy as np

        space, modality = split_key(key)
        db_ids = rows.vector_ids(self.db, self.name, space, modality)
        present = self.store.ids(key)
        extra = np.setdiff1d(present, db_ids, assume_unique=True)
        missing = np.setdiff1d(db_ids, present, assume_unique=True)
        if extra.size:
            self.store.delete(extra)
            report.removed += int(extra.size)
        for chunk in np.array_split(missing, max(1, int(np.ceil(missing.size / _REPAIR_CHUNK)))):
            if chunk.size:
                report.added += self._upsert_from_db(key, chunk)
        return report

    def _upsert_from_db(self, key: str, ids: np.ndarray) -> int:
        import numpy as np

        space, _ = split_key(key)
        found, vectors = rows.vectors(self.db, space, ids, self.dims[space])
        if not found.size:
            return 0
        payloads = self._payloads_of(found)
        kept = np.asarray([i for i in found if int(i) in payloads], dtype=np.int64)
        if kept.size < found.size:
            vectors = vectors[np.isin(found, kept)]
        if kept.size:
            self.store.upsert(key, kept, vectors, [payloads[int(i)] for i in kept])
        return int(kept.size)

    def _payloads_of(self, ids: np.ndarray) -> dict[int, rows.ItemPayload]:
        if self.store.filters_payload:
            return rows.payloads(self.db, self.name, [int(i) for i in ids])
        # a store that keeps no payload gets placeholders: no need to read the documents
        return {int(i): rows.ItemPayload(int(i), "", 0, "", {}) for i in ids}

    def _drain(self) -> int:
        """Apply what the durable store has not acknowledged: a killed writer's items, failed calls.
        Returns how many operations were applied."""
        import numpy as np

        applied = 0
        while batch := pending.pending(self.db, self.name, _DRAIN_BATCH):
            deletes = np.asarray([i for i, op in batch if op == pending.DELETE], dtype=np.int64)
            upserts = np.asarray([i for i, op in batch if op == pending.UPSERT], dtype=np.int64)
            self.store.delete(deletes)
            if upserts.size:
                payloads = rows.payloads(self.db, self.name, [int(i) for i in upserts])
                for space in self.encoders:
                    found, vectors = rows.vectors(self.db, space, upserts, self.dims[space])
                    for modality in sorted({payloads[int(i)].modality for i in found if int(i) in payloads}):
                        chosen = np.asarray(
                            [int(i) in payloads and payloads[int(i)].modality == modality for i in found]
                        )
                        if chosen.any():
                            key = index_key(space, modality)
                            self.store.ensure(key, self.encoders[space].model_id, self.dims[space])
                            picked = found[chosen]
                            self.store.upsert(
                                key, picked, vectors[chosen], [payloads[int(i)] for i in picked]
                            )
            pending.acknowledge(self.db, batch)
            applied += len(batch)
        if applied:
            log.info("collection %s: applied %d pending vector store operations", self.name, applied)
        return applied

    def optimise(self) -> list[str]:
        """A cache relayouts indexes whose size calls for it (FAISS: flat <-> IVF at index.ivf_min_items)."""
        return self.store.optimise(self._database_vectors)

    def _database_vectors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) the database holds for index `key`: what a cache is rebuilt from."""
        space, modality = split_key(key)
        ids = rows.vector_ids(self.db, self.name, space, modality)
        return rows.vectors(self.db, space, ids, self.dims[space])

    def save_if_unlocked(self) -> None:
        """A reader repairs in memory; it saves only when no writer holds the collection (the writer's own
        saves would otherwise race with ours)."""
        try:
            with self.writer():
                self.save()
        except CollectionLocked:
            log.info("collection %s is being written; repaired index kept in memory only", self.name)

    # ---- writes ---------------------------------------------------------------------------------------

    @contextmanager
    def writer(self, wait_s: float = 0.0) -> Iterator[None]:
        """Exclusive write access across processes (two writers on one collection would race), waiting up
        to `wait_s` seconds for another writer to finish; raises CollectionLocked after that. Re-entrant in
        the thread that holds it. Writes start from what the database holds: a cache refreshes first, a
        durable store gets what a killed writer left."""
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
                if self.store.durable:
                    self._drain()
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
        with self._sync:
            with self.db.session() as session:
                doc, old_ids, new_ids = rows.replace_document(
                    session,
                    self.name,
                    path=path,
                    path_bytes=path_bytes,
                    kind=kind,
                    content_hash=content_hash,
                    size=size,
                    mtime=mtime,
                    meta=meta,
                    items=items,
                    spaces=self.encoders,
                )
                if self.store.durable:
                    pending.queue(session, self.name, old_ids, pending.DELETE)
                    pending.queue(session, self.name, new_ids, pending.UPSERT)
                doc_id, doc_meta = doc.id, dict(doc.meta or {})
                generation = collection_rows.bump_generation(session, self.name)
            operations = [(i, pending.DELETE) for i in old_ids] + [(i, pending.UPSERT) for i in new_ids]
            self._apply(operations, lambda: self._index_new(doc_id, path, doc_meta, new_ids, items, old_ids))
            self._applied(generation)
        return doc_id

    def _index_new(
        self,
        doc_id: int,
        path: str,
        meta: dict[str, Any],
        new_ids: list[int],
        items: Sequence[NewItem],
        old_ids: list[int],
    ) -> None:
        import numpy as np

        self.store.delete(np.asarray(old_ids, dtype=np.int64))
        grouped: dict[str, list[tuple[int, np.ndarray, rows.ItemPayload]]] = {}
        for item_id, it in zip(new_ids, items, strict=True):
            payload = rows.ItemPayload(item_id, it.modality, doc_id, path, meta)
            for space, vec in it.vectors.items():
                if space in self.encoders:
                    grouped.setdefault(index_key(space, it.modality), []).append((item_id, vec, payload))
        for key, entries in grouped.items():
            space, _ = split_key(key)
            self.store.ensure(key, self.encoders[space].model_id, self.dims[space])
            ids = np.asarray([e[0] for e in entries], dtype=np.int64)
            self.store.upsert(key, ids, np.stack([e[1] for e in entries]), [e[2] for e in entries])

    def _apply(self, operations: list[tuple[int, str]], apply: Any) -> None:
        """Run `apply` against the store. A durable store: on success the operations are acknowledged; on
        failure they stay pending (retried by the next writer) and the write itself stands."""
        if not self.store.durable:
            apply()
            return
        try:
            apply()
        except MmragError as exc:
            log.warning("collection %s: %s; %d operations stay pending", self.name, exc, len(operations))
            return
        pending.acknowledge(self.db, operations)

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
        rows.record_failure(
            self.db,
            self.name,
            path=path,
            path_bytes=path_bytes,
            kind=kind,
            content_hash=content_hash,
            size=size,
            mtime=mtime,
            error=error,
        )

    def touch_document(self, doc_id: int, mtime: float) -> None:
        rows.touch_document(self.db, doc_id, mtime)

    def delete_documents(self, doc_ids: Iterable[int]) -> int:
        import numpy as np

        ids = list(doc_ids)
        if not ids:
            return 0
        with self._sync:
            with self.db.session() as session:
                item_ids = rows.delete_documents(session, ids)
                if self.store.durable:
                    pending.queue(session, self.name, item_ids, pending.DELETE)
                generation = collection_rows.bump_generation(session, self.name)
            self._apply(
                [(i, pending.DELETE) for i in item_ids],
                lambda: self.store.delete(np.asarray(item_ids, dtype=np.int64)),
            )
            self._applied(generation)
        return len(ids)

    def set_metadata(self, paths: Sequence[str], meta: dict[str, Any]) -> None:
        """New metadata for these documents (a file uploaded again with other metadata); a store that
        filters on payloads gets their items again."""
        if not paths:
            return
        with self._sync:
            with self.db.session() as session:
                item_ids = rows.set_metadata(session, self.name, paths, meta)
                if self.store.durable and item_ids:
                    pending.queue(session, self.name, item_ids, pending.UPSERT)
                generation = collection_rows.bump_generation(session, self.name)
            if self.store.durable:
                self._drain_or_keep()
            self._applied(generation)

    def _drain_or_keep(self) -> None:
        try:
            self._drain()
        except MmragError as exc:
            log.warning("collection %s: %s; pending operations are retried later", self.name, exc)

    def save(self) -> None:
        """A cache: save what changed, as holding the current generation. Durable storage: apply whatever
        is still pending; what the store cannot take now stays queued (`waiting()` counts it)."""
        with self._sync:
            if self.store.durable:
                self._drain_or_keep()
            else:
                self.store.persist(self.generation)

    def waiting(self) -> int:
        """Items a durable store has not acknowledged yet (0 for a cache)."""
        return pending.count(self.db, self.name) if self.store.durable else 0

    def close(self) -> None:
        self.store.close()

    # ---- reads ----------------------------------------------------------------------------------------

    def documents(self) -> list[Document]:
        return rows.documents(self.db, self.name)

    def document_by_path(self, path: str) -> Document | None:
        return self.documents_by_path([path]).get(path)

    def documents_by_path(self, paths: Sequence[str]) -> dict[str, Document]:
        return rows.documents_by_path(self.db, self.name, paths)

    def items_by_id(self, ids: Iterable[int]) -> dict[int, tuple[Item, Document]]:
        return rows.items_by_id(self.db, self.name, ids)

    def lexical_search(
        self,
        text: str,
        depth: int,
        modalities: Sequence[str],
        filters: Filters | None = None,
        common: lexical.CommonWords | None = None,
    ) -> dict[str, list[tuple[int, float]]]:
        """Modality -> the `depth` best (item id, BM25 score) of the lexical index; with `filters`, of the
        items they accept (inside the search, as for the vector stores)."""
        wanted = [m for m in modalities if filters is None or filters.wants_modality(m)]
        documents = None
        if filters is not None and filters.narrows_items:
            documents = rows.matching_document_ids(self.db, self.name, filters)
        with self.db.session() as session:
            cache = (common, self.generation) if common is not None else None
            return lexical.search(session, self.name, text, depth, wanted, cache, documents)

    def search(
        self, space: str, modality: str, queries: np.ndarray, k: int, filters: Filters | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best items of one index; with `filters`, the k best of those it accepts (pushed into the
        store's search: a selective filter still gives k hits when k items match)."""
        import numpy as np

        where = None
        if filters is not None and filters.narrows_items:
            where = Where(filters, lambda: rows.matching_item_ids(self.db, self.name, modality, filters))
        return self.store.search(
            index_key(space, modality), np.atleast_2d(queries).astype(np.float32), k, where
        )
