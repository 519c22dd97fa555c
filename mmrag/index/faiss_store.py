"""index.backend=faiss: one FAISS index per (space, modality) in files under the data dir, a cache of the
database.

The database keeps every vector; these indexes are rebuilt or repaired from it whenever they lag (the
collection does that on open and when another process wrote). Each index is saved atomically with its
manifest (mmrag.index.vector_index), and `state.json` records the database generation the saved indexes
hold: an open trusts them when that generation is the database's, and a save never overwrites indexes
saved at a newer generation by another process.

Saved indexes load on first use: opening reads their manifests only, so a command that needs counts and
models (`mmrag stats`, an `mmrag index` that finds nothing changed) never imports FAISS. An index whose file
turns out unreadable then is rebuilt from the database through `rebuild_source`, as at open.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.errors import IndexCorruptError, MmragError
from mmrag.index import gpu
from mmrag.index.base import IndexInfo, OpenedIndex, VectorStore, Where, index_key, split_key
from mmrag.index.manifest import INDEX_FILE, MANIFEST_FILE, IndexManifest, read_manifest
from mmrag.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from mmrag.index.vector_index import VectorIndex
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
        self.indexes: dict[str, VectorIndex] = {}  # loaded
        self._saved: dict[str, tuple[Path, IndexManifest]] = {}  # on disk, not loaded yet
        self._unsaved: set[str] = set()  # keys changed in memory since they were loaded or saved
        self._lock = threading.RLock()

    def open(self, models: dict[str, tuple[str, int]]) -> list[OpenedIndex]:
        opened = []
        for space, (model_id, dim) in models.items():
            for directory in sorted(p for p in self.dir.glob(f"{space}.*") if p.is_dir()):
                key = directory.name
                problem = ""
                if (directory / MANIFEST_FILE).exists() or (directory / INDEX_FILE).exists():
                    try:
                        manifest = read_manifest(directory, expected_model_id=model_id, expected_dim=dim)
                    except IndexCorruptError as exc:
                        log.warning(
                            "index %s is unusable (%s); rebuilding it from the database", directory, exc
                        )
                        problem = str(exc)
                    else:
                        self._saved[key] = (directory, manifest)
                        opened.append(OpenedIndex(key))
                        continue
                self.indexes[key] = _vector_index().create(key, model_id, dim, self.settings.index)
                self._unsaved.add(key)
                opened.append(OpenedIndex(key, problem))
        return opened

    def _index(self, key: str) -> VectorIndex | None:
        """The index `key`, loaded from its files on first use; None when there is none."""
        with self._lock:
            index = self.indexes.get(key)
            if index is not None or key not in self._saved:
                return index
            directory, manifest = self._saved.pop(key)
            vector_index = _vector_index()
            try:
                expected = {"expected_model_id": manifest.model_id, "expected_dim": manifest.dim}
                index = vector_index.load(directory, self.settings.index, **expected)
            except IndexCorruptError as exc:
                log.warning("index %s is unusable (%s); rebuilding it from the database", directory, exc)
                if self.rebuild_source is None:
                    self._saved[key] = (directory, manifest)  # the next use says so again
                    raise
                index = vector_index.create(key, manifest.model_id, manifest.dim, self.settings.index)
                index.rebuild(*self.rebuild_source(key))
                self._unsaved.add(key)
                self.rebuilt_on_load[key] = str(exc)
            self.indexes[key] = index
            return index

    def index_keys(self) -> list[str]:
        with self._lock:
            return sorted({*self.indexes, *self._saved})

    def ensure(self, key: str, model_id: str, dim: int) -> None:
        with self._lock:
            if key not in self.indexes and key not in self._saved:
                self.indexes[key] = _vector_index().create(key, model_id, dim, self.settings.index)
                self._unsaved.add(key)

    def upsert(self, key: str, ids: np.ndarray, vectors: np.ndarray, payloads: Sequence[ItemPayload]) -> None:
        import numpy as np

        index = self._index(key)
        assert index is not None, f"ensure({key!r}) comes first"
        ids = np.asarray(ids, dtype=np.int64)
        index.remove(ids)  # an upsert replaces; VectorIndex.add refuses ids it holds
        index.add(ids, vectors)
        self._unsaved.add(key)

    def delete(self, ids: np.ndarray) -> None:
        import numpy as np

        if len(ids) == 0:
            return
        for key in self.index_keys():
            index = self._index(key)
            if index is not None and index.remove(np.asarray(ids, dtype=np.int64)):
                self._unsaved.add(key)

    def search(
        self, key: str, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        queries = np.atleast_2d(queries).astype(np.float32)
        index = self._index(key)
        if index is None:  # nothing of this modality indexed yet
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        allowed = where.ids() if where is not None and where.filters.narrows_items else None
        return index.search(queries, k, allowed=allowed)

    def ids(self, key: str) -> np.ndarray:
        import numpy as np

        index = self._index(key)
        return index.ids() if index is not None else np.empty(0, np.int64)

    def count(self, key: str) -> int:
        with self._lock:
            if key in self._saved:  # the count it was saved with: no need to load it
                return self._saved[key][1].count
            index = self.indexes.get(key)
            return len(index) if index is not None else 0

    def describe(self, key: str) -> IndexInfo:
        with self._lock:
            if key in self._saved:
                manifest = self._saved[key][1]
                device = "gpu" if gpu.use_gpu(self.settings.index) else "cpu"
            else:
                manifest, device = self.indexes[key].manifest, self.indexes[key].device
        return IndexInfo(
            count=manifest.count,
            type=manifest.index_type,
            model=manifest.model_id,
            dim=manifest.dim,
            device=device,
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
        for key in self.keys_to_relayout():
            index = self._index(key)
            assert index is not None
            index.rebuild(*rebuild_source(key))
            rebuilt.append(key)
            self._unsaved.add(key)
        return rebuilt

    def keys_to_relayout(self) -> list[str]:
        """The indexes `optimise` would rebuild: flat ones at `index.ivf_min_items` items or more, and
        others below it (read from manifests where not loaded)."""
        threshold = self.settings.index.ivf_min_items
        return [
            key
            for key in self.index_keys()
            if (self.describe(key).type == "flat") == (self.count(key) >= threshold)
        ]

    def saved_and_readable(self, models: dict[str, tuple[str, int]]) -> bool:
        """Whether `open(models)` would find every index of these spaces saved, with a manifest made by its
        model: then opening reads manifests only and repairs nothing."""
        for space, (model_id, dim) in models.items():
            for directory in (p for p in self.dir.glob(f"{space}.*") if p.is_dir()):
                try:
                    read_manifest(directory, expected_model_id=model_id, expected_dim=dim)
                except MmragError:  # unreadable or another model's: open says so, or repairs it
                    return False
        return True

    def mark_changed(self, key: str) -> None:
        if self._index(key) is not None:  # saved by the next persist (loaded first: it saves what it holds)
            self._unsaved.add(key)


def _vector_index() -> type[VectorIndex]:
    from mmrag.index.vector_index import VectorIndex  # FAISS loads here, on first use

    return VectorIndex


__all__ = ["STATE_FILE", "Store", "index_key", "split_key"]
