"""index.backend=faiss: one FAISS index per (space, modality) in files under the data dir, a cache of the
database.

The database keeps every vector; these indexes are rebuilt or repaired from it whenever they lag (the
collection does that on open and when another process wrote). Each index is saved atomically with its
manifest (mmrag.index.vector_index), and `state.json` records the database generation the saved indexes
hold: an open trusts them when that generation is the database's, and a save never overwrites indexes
saved at a newer generation by another process.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np

from mmrag.errors import IndexCorruptError
from mmrag.index.base import IndexInfo, OpenedIndex, VectorStore, Where, index_key, split_key
from mmrag.index.vector_index import VectorIndex
from mmrag.settings import Settings
from mmrag.store.items import ItemPayload

log = logging.getLogger(__name__)

STATE_FILE = "state.json"  # {"generation": G}: the database generation the saved indexes hold


class Store(VectorStore):
    kind = "faiss"
    durable = False
    filters_payload = False

    def __init__(self, settings: Settings, collection: str) -> None:
        super().__init__(settings, collection)
        self.dir = settings.index_dir(collection)
        self.indexes: dict[str, VectorIndex] = {}
        self._unsaved: set[str] = set()  # keys changed in memory since they were loaded or saved
        self._lock = threading.RLock()

    def open(self, models: dict[str, tuple[str, int]]) -> list[OpenedIndex]:
        opened = []
        for space, (model_id, dim) in models.items():
            for directory in sorted(p for p in self.dir.glob(f"{space}.*") if p.is_dir()):
                key = directory.name
                problem = ""
                index: VectorIndex | None = None
                if VectorIndex.exists(directory):
                    try:
                        index = VectorIndex.load(
                            directory, self.settings.index, expected_model_id=model_id, expected_dim=dim
                        )
                    except IndexCorruptError as exc:
                        log.warning(
                            "index %s is unusable (%s); rebuilding it from the database", directory, exc
                        )
                        problem = str(exc)
                if index is None:
                    index = VectorIndex.create(key, model_id, dim, self.settings.index)
                    self._unsaved.add(key)
                self.indexes[key] = index
                opened.append(OpenedIndex(key, problem))
        return opened

    def index_keys(self) -> list[str]:
        return sorted(list(self.indexes))  # list() snapshots the keys: a writer thread may add one meanwhile

    def ensure(self, key: str, model_id: str, dim: int) -> None:
        with self._lock:
            if key not in self.indexes:
                self.indexes[key] = VectorIndex.create(key, model_id, dim, self.settings.index)
                self._unsaved.add(key)

    def upsert(self, key: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[ItemPayload]) -> None:
        index = self.indexes[key]
        ids = np.asarray(ids, dtype=np.int64)
        index.remove(ids)  # an upsert replaces; VectorIndex.add refuses ids it holds
        index.add(ids, vectors)
        self._unsaved.add(key)

    def delete(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        for key, index in list(self.indexes.items()):
            if index.remove(np.asarray(ids, dtype=np.int64)):
                self._unsaved.add(key)

    def search(
        self, key: str, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(queries).astype(np.float32)
        index = self.indexes.get(key)
        if index is None:  # nothing of this modality indexed yet
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        allowed = where.ids() if where is not None and where.filters.narrows_items else None
        return index.search(queries, k, allowed=allowed)

    def ids(self, key: str) -> np.ndarray:
        index = self.indexes.get(key)
        return index.ids() if index is not None else np.empty(0, np.int64)

    def count(self, key: str) -> int:
        index = self.indexes.get(key)
        return len(index) if index is not None else 0

    def describe(self, key: str) -> IndexInfo:
        manifest = self.indexes[key].manifest
        return IndexInfo(
            count=manifest.count,
            type=manifest.index_type,
            model=manifest.model_id,
            dim=manifest.dim,
            device=self.indexes[key].device,
            backend=self.kind,
        )

    # ---- the cache's own persistence --------------------------------------------------------------------

    def saved_generation(self) -> int | None:
        try:
            return int(json.loads((self.dir / STATE_FILE).read_text())["generation"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def persist(self, generation: int) -> None:
        """Save every changed index, then the generation they hold. Indexes saved by another process at a
        newer generation are never overwritten with older ones (this process refreshes first, next time)."""
        with self._lock:
            saved = self.saved_generation()
            if saved is not None and saved > generation:
                log.warning(
                    "collection %s: not saving indexes at generation %d over newer ones (%d) on disk",
                    self.collection, generation, saved,
                )  # fmt: skip
                return
            for key in sorted(self._unsaved):  # an unchanged index is not written again (1M items: 2 GB)
                self.indexes[key].save(self.dir / key)
            self._unsaved.clear()
            if saved != generation:
                self.dir.mkdir(parents=True, exist_ok=True)
                state = self.dir / STATE_FILE
                tmp = state.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps({"generation": generation}))
                os.replace(tmp, state)

    def optimise(self, rebuild_source: Callable[[str], tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """Rebuild flat indexes that have grown past `index.ivf_min_items` as IVF (and back when shrunk)."""
        rebuilt = []
        threshold = self.settings.index.ivf_min_items
        for key, index in list(self.indexes.items()):
            is_flat = index.manifest.index_type == "flat"
            if is_flat == (len(index) >= threshold):
                index.rebuild(*rebuild_source(key))
                rebuilt.append(key)
                self._unsaved.add(key)
        return rebuilt

    def mark_changed(self, key: str) -> None:
        self._unsaved.add(key)


__all__ = ["STATE_FILE", "Store", "index_key", "split_key"]
