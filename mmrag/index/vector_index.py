"""One FAISS index per embedding space of a collection, keyed by database primary keys.

The database is the source of truth; an index is a cache of the vectors stored there and can always be
rebuilt from it. So this module knows nothing about the database: it takes (ids, vectors) and gives back
ids. Scores are inner products of L2-normalised vectors, i.e. cosine similarity.

Three layouts, chosen at rebuild time: flat below settings.ivf_min_items, else settings.ann (IVF or HNSW).
- "flat": IndexIDMap2 around an inner-product IndexFlat. Exact. IDMap2 keeps the id -> position map in
  step with the flat index's renumbering on removal.
- "ivf{nlist},flat": IndexIVFFlat with its own add_with_ids/remove_ids. The inverted lists store the
  64-bit ids themselves, so it is never wrapped in IndexIDMap: IDMap's remove_ids assumes the flat-style
  renumbering that IVF does not do, and returns the wrong ids afterwards (faiss issues #1379, #4535).
  Trained on a sample of 64 points per list (FAISS asks for 39-256), with sqrt(n / 2) lists: a million
  vectors build in under a minute on two cores (sizing and measurements: `choose_nlist`).
- "hnsw{M},flat": IndexIDMap2 around an IndexHNSWFlat graph. No training, fast and accurate queries, but
  slower to build than IVF and FAISS's HNSW cannot delete: a removed vector stays in the graph with its
  id set to -1 and is filtered out of every search (IDSelector), so it costs memory and a little search
  time until the next rebuild. Searches run on the CPU (FAISS has no GPU HNSW).

On disk a directory holds `index.faiss` and `manifest.json`; the manifest carries the sha256 of the index
file so that a pair torn by a kill between the two renames is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mmrag.errors import IndexCorruptError, MmragError, ModelMismatchError
from mmrag.index import gpu
from mmrag.settings import IndexSettings

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
METRIC = "inner_product"

# Rows further than this from unit length are normalised here rather than trusted.
_NORM_TOLERANCE = 1e-3
# faiss k-means warns (and trains poor centroids) with fewer training points than this per list.
_MIN_POINTS_PER_LIST = 39
_MAX_NLIST = 65536
# Training points per list: inside FAISS's 39-256, where more points move the centroids too little to
# change recall (measured on real MiniLM vectors, bench/ann.py) while training time grows with them.
TRAIN_POINTS_PER_LIST = 64
# Lists an auto nprobe searches. On real clustered embeddings (bench/ann.py) recall@10 against exact search
# follows the number of lists probed more than their share: 64 gave 0.980 at 100k (224 lists) and 0.962 at
# 1M (707 lists), and 0.95-0.96 at 1M with 500 or 1,000 lists (README "Throughput and latency").
AUTO_NPROBE = 64
_LIVE_IDS = faiss.IDSelectorRange(0, np.iinfo(np.int64).max)  # HNSW entries of removed ids carry id -1


class VectorInputError(MmragError, ValueError):
    """Ids or vectors an index cannot take: wrong shape or dimension, NaN/inf, duplicate or negative ids."""


@dataclass(kw_only=True)
class IndexManifest:
    """What an index file holds and how it was built; written next to it as manifest.json."""

    space: str  # embedding space, e.g. "clip", "text"
    model_id: str  # e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k"
    dim: int
    count: int  # vectors searchable (an HNSW file may also hold removed ones, id -1)
    index_type: str  # "flat" | "ivf{nlist},flat" | "hnsw{M},flat"
    metric: str = METRIC
    index_sha256: str  # of the saved index file; "" for an index never saved or loaded
    format_version: int = FORMAT_VERSION
    updated_at: str  # ISO 8601, UTC, of the last change to the contents

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> IndexManifest:
        """Parse a manifest; anything missing or mistyped means the file is corrupt."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            manifest = cls(**{field.name: raw[field.name] for field in fields(cls)})
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"index manifest {source} is unreadable ({exc!r})") from exc
        for name in ("dim", "count", "format_version"):
            value = getattr(manifest, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise IndexCorruptError(f"index manifest {source}: {name} must be a non-negative integer")
        for name in ("space", "model_id", "index_type", "metric", "index_sha256", "updated_at"):
            if not isinstance(getattr(manifest, name), str):
                raise IndexCorruptError(f"index manifest {source}: {name} must be a string")
        return manifest


class VectorIndex:
    """A thread-safe FAISS index of one embedding space, with stable int64 ids.

    Use `create`, `load` or `rebuild`; the constructor is internal. The CPU index is the master copy;
    on a GPU machine searches run on a clone that is refreshed lazily after the master changes.
    """

    def __init__(
        self,
        index: faiss.Index,
        *,
        space: str,
        model_id: str,
        settings: IndexSettings,
        ids: np.ndarray,
        index_sha256: str = "",
        updated_at: str | None = None,
    ) -> None:
        self._space = space
        self._model_id = model_id
        self._dim = int(index.d)
        self._settings = settings
        self._lock = threading.RLock()
        # Serialises saves so that an older snapshot can never be written after a newer one.
        self._save_lock = threading.Lock()
        self._index = _configure(index, settings)
        self._ids = ids  # sorted int64, mirrors the index for O(log n) duplicate checks
        self._saved_sha256 = index_sha256
        self._updated_at = updated_at or _now()
        self._gpu_index: faiss.Index | None = None  # None: stale or never made
        self.device: str = "gpu" if gpu.use_gpu(settings) else "cpu"

    # ---- construction -------------------------------------------------------------------------------

    @classmethod
    def create(cls, space: str, model_id: str, dim: int, settings: IndexSettings) -> VectorIndex:
        """An empty flat index."""
        if not space or not model_id:
            raise VectorInputError("an index needs a non-empty space name and model id")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise VectorInputError(f"index dimension must be a positive integer; got {dim!r}")
        return cls(
            _new_flat(int(dim)),
            space=space,
            model_id=model_id,
            settings=settings,
            ids=np.empty(0, dtype=np.int64),
        )

    @classmethod
    def exists(cls, directory: Path) -> bool:
        directory = Path(directory)
        return (directory / INDEX_FILE).is_file() and (directory / MANIFEST_FILE).is_file()

    @classmethod
    def load(
        cls,
        directory: Path,
        settings: IndexSettings,
        *,
        expected_model_id: str | None = None,
        expected_dim: int | None = None,
    ) -> VectorIndex:
        """Open a saved index, checking it against its manifest and the configured model.

        Raises ModelMismatchError when the index was built with another model or dimension, and
        IndexCorruptError when either file is missing, unreadable or does not match the other (the caller
        then rebuilds from the database). Leftover *.tmp files from an interrupted save are ignored.
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        index_path = directory / INDEX_FILE
        if not manifest_path.is_file():
            raise IndexCorruptError(f"no index manifest at {manifest_path}")
        manifest = IndexManifest.from_json(manifest_path.read_text(encoding="utf-8"), manifest_path)
        if manifest.format_version != FORMAT_VERSION:
            raise IndexCorruptError(
                f"index at {directory} has format version {manifest.format_version}; "
                f"this mmrag reads version {FORMAT_VERSION}"
            )
        _check_model(directory, manifest, expected_model_id, expected_dim)
        if not index_path.is_file():
            raise IndexCorruptError(f"index file {index_path} is missing (its manifest is there)")

        # Hash and parse the same bytes, so what was checked is what gets loaded.
        data = index_path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != manifest.index_sha256:
            raise IndexCorruptError(
                f"index file {index_path} does not match its manifest (sha256 {sha256[:12]}..., manifest "
                f"says {manifest.index_sha256[:12]}...): a save was interrupted or the file was replaced"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexCorruptError(f"index file {index_path} cannot be read by faiss: {exc}") from exc
        del data

        ids = _stored_ids(index) if _layout(index) is not None else np.empty(0, dtype=np.int64)
        problem = _mismatch(index, manifest, len(ids))
        if problem:
            raise IndexCorruptError(f"index file {index_path} does not match its manifest: {problem}")
        if len(np.unique(ids)) != len(ids):
            raise IndexCorruptError(f"index file {index_path} holds duplicate ids")
        return cls(
            index,
            space=manifest.space,
            model_id=manifest.model_id,
            settings=settings,
            ids=ids,
            index_sha256=sha256,
            updated_at=manifest.updated_at,
        )

    # ---- contents -----------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their database ids.

        Refuses ids already present (remove them first to replace a vector) and the whole batch on any bad
        row. Adding never changes the layout: a flat index that grows past settings.ivf_min_items stays
        flat (exact, slower per query) until the next `rebuild`, which picks IVF.
        """
        ids = _checked_new_ids(ids)
        vectors = _checked_vectors(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise VectorInputError(f"got {len(ids)} ids for {len(vectors)} vectors")
        if len(ids) == 0:
            return
        with self._lock:
            present = ids[_contained_in(ids, self._ids)]
            if present.size:
                raise VectorInputError(
                    f"ids already in the {self._space!r} index: {_preview(present)}; "
                    "remove them first to replace their vectors"
                )
            self._index.add_with_ids(vectors, ids)
            self._ids = _insert_sorted(self._ids, np.sort(ids))
            self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids; ids not present are skipped. Returns how many were removed."""
        wanted = np.unique(_as_id_array(ids))
        with self._lock:
            present = wanted[_contained_in(wanted, self._ids)]
            if present.size == 0:
                return 0
            removed = (
                _hide_ids(self._index, present)
                if _is_hnsw(self._index)
                else int(self._index.remove_ids(present))
            )
            self._ids = self._ids[~_contained_in(self._ids, present)]
            self._changed()
            if removed != present.size:
                self._ids = _stored_ids(self._index)
                raise IndexCorruptError(
                    f"the {self._space!r} index removed {removed} of {present.size} ids it was known to "
                    "hold; rebuild it from the database"
                )
            return removed

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the contents, choosing the layout by size: settings.ann (IVF or HNSW) from
        settings.ivf_min_items up, else flat. A rebuild also drops an HNSW index's removed entries.

        The new index is built (and an IVF trained) before the swap, so searches keep answering from the
        old contents meanwhile; adds made during a rebuild are replaced along with everything else.
        """
        ids = _checked_new_ids(ids)
        vectors = _checked_vectors(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise VectorInputError(f"got {len(ids)} ids for {len(vectors)} vectors")
        if len(ids) >= self._settings.ivf_min_items and self._settings.ann == "hnsw":
            index = _new_hnsw(ids, vectors, self._settings)
        elif len(ids) >= self._settings.ivf_min_items:
            index = _new_ivf(ids, vectors)
        else:
            index = _new_flat(self._dim)
            if len(ids):
                index.add_with_ids(vectors, ids)
        index = _configure(index, self._settings)
        sorted_ids = np.sort(ids)
        with self._lock:
            self._index = index
            self._ids = sorted_ids
            self._changed()

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best ids per query, best first: (scores float32 (n, k), ids int64 (n, k)).

        Slots beyond what the index holds (k > len, or an IVF probe that found fewer) have id -1 and
        score -inf. A single 1-D query is treated as a batch of one. `allowed` (ids) restricts the search to
        those ids inside FAISS (an IDSelector), so k of them come back whenever k are in the index.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise VectorInputError(f"k must be a positive integer; got {k!r}")
        k = int(k)
        batch = _checked_vectors(queries, self._dim, "queries", allow_single=True)
        scores = np.full((len(batch), k), -np.inf, dtype=np.float32)
        labels = np.full((len(batch), k), -1, dtype=np.int64)
        with self._lock:
            if allowed is not None:
                found_scores, found_ids = self._search_allowed(batch, k, _as_id_array(allowed))
                k_found = found_ids.shape[1]
            else:
                k_found = min(k, self._index.ntotal)
                if len(batch) == 0 or k_found == 0:
                    return scores, labels
                searcher = self._searcher(k_found)
                if _is_hnsw(self._index):
                    found_scores, found_ids = searcher.search(batch, k_found, params=self._hnsw_params())
                else:
                    found_scores, found_ids = searcher.search(batch, k_found)
        scores[:, :k_found] = found_scores
        labels[:, :k_found] = found_ids
        scores[labels < 0] = -np.inf  # faiss marks a missing result with -FLT_MAX
        return scores, labels

    def _search_allowed(
        self, batch: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search only `allowed` (on the CPU: GPU indexes take no IDSelector). An IVF probe of nprobe lists
        may hold fewer than k allowed ids; then every list is probed, which is exact over the allowed ids
        (the scan tests the selector before computing a distance, so it costs little more than a flat scan
        of the allowed vectors)."""
        present = np.unique(allowed)
        present = present[_contained_in(present, self._ids)]
        k_found = min(k, present.size)
        if len(batch) == 0 or k_found == 0:
            return np.zeros((len(batch), 0), np.float32), np.zeros((len(batch), 0), np.int64)
        selector = faiss.IDSelectorBatch(present)  # hidden HNSW entries (id -1) are never in it
        if not isinstance(self._index, faiss.IndexIVF):
            params = faiss.SearchParametersHNSW() if _is_hnsw(self._index) else faiss.SearchParameters()
            if _is_hnsw(self._index):
                params.efSearch = max(self._settings.hnsw_ef_search, k_found)
            params.sel = selector
            found_scores, found_ids = self._index.search(batch, k_found, params=params)
            if (found_ids < 0).any():  # a graph index (HNSW) can lose a very selective filter's items
                return _exact_among(self._index, batch, k_found, present)
            return found_scores, found_ids
        nlist = self._index.nlist
        params = faiss.SearchParametersIVF(sel=selector, nprobe=choose_nprobe(nlist, self._settings.nprobe))
        found_scores, found_ids = self._index.search(batch, k_found, params=params)
        if (found_ids < 0).any() and params.nprobe < nlist:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nlist)
            found_scores, found_ids = self._index.search(batch, k_found, params=params)
        return found_scores, found_ids

    def ids(self) -> np.ndarray:
        """All ids present, int64, sorted ascending."""
        with self._lock:
            return self._ids.copy()

    def __len__(self) -> int:
        with self._lock:
            return int(self._ids.size)

    # ---- persistence --------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write index.faiss then manifest.json into `directory`, each through a fsynced temp + rename.

        A kill at any point leaves either the old pair, or a new index with the old manifest, which `load`
        rejects by sha256. The index is snapshotted in memory (briefly twice its size) so searches and
        adds do not wait on the disk.
        """
        directory = Path(directory)
        with self._save_lock:
            with self._lock:
                data = faiss.serialize_index(self._index)
                manifest = self._manifest(index_sha256=hashlib.sha256(data).hexdigest())
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob("*.tmp"):
                stale.unlink(missing_ok=True)
            _write_durably(directory / INDEX_FILE, memoryview(data))
            _write_durably(directory / MANIFEST_FILE, manifest.to_json().encode("utf-8"))
            _fsync_directory(directory)
            with self._lock:
                self._saved_sha256 = manifest.index_sha256
        log.debug("saved %s index (%d vectors) to %s", self._space, manifest.count, directory)

    # ---- description --------------------------------------------------------------------------------

    @property
    def manifest(self) -> IndexManifest:
        """The current description; index_sha256 is that of the last file saved or loaded."""
        with self._lock:
            return self._manifest(index_sha256=self._saved_sha256)

    @property
    def space(self) -> str:
        return self._space

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        manifest = self.manifest
        return (
            f"VectorIndex(space={self._space!r}, model_id={self._model_id!r}, dim={self._dim}, "
            f"count={manifest.count}, index_type={manifest.index_type!r}, device={self.device!r})"
        )

    # ---- internals ----------------------------------------------------------------------------------

    def _manifest(self, *, index_sha256: str) -> IndexManifest:
        return IndexManifest(
            space=self._space,
            model_id=self._model_id,
            dim=self._dim,
            count=int(self._ids.size),
            index_type=_layout(self._index) or "unknown",
            index_sha256=index_sha256,
            updated_at=self._updated_at,
        )

    def _changed(self) -> None:
        self._gpu_index = None
        self._updated_at = _now()

    def _hnsw_params(self) -> faiss.SearchParametersHNSW:
        # A fresh object per search: IndexIDMap swaps its selector in place while it searches.
        params = faiss.SearchParametersHNSW()
        params.efSearch = self._settings.hnsw_ef_search
        if self._ids.size != self._index.ntotal:  # removed entries (id -1) remain in the graph
            params.sel = _LIVE_IDS
        return params

    def _searcher(self, k: int) -> faiss.Index:
        """The index to search: the GPU clone (made now if stale) or, failing that, the CPU master."""
        if self.device != "gpu" or k > gpu.GPU_MAX_K or _is_hnsw(self._index):
            return self._index
        if self._gpu_index is None:
            try:
                self._gpu_index = gpu.to_gpu(self._index)
            except Exception as exc:  # out of GPU memory, unsupported layout: CPU search still works
                log.warning("cannot copy the %s index to the GPU (%s); searching on CPU", self._space, exc)
                self.device = "cpu"
                return self._index
        return self._gpu_index


# ---- building blocks --------------------------------------------------------------------------------


def _new_flat(dim: int) -> faiss.Index:
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def choose_nlist(count: int) -> int:
    """IVF list count for `count` vectors: sqrt(n / 2), and never fewer than 39 points per list.

    Build time is k-means (training points x lists) plus assigning every vector to a list (n x lists), so
    it grows with lists; a query scans nprobe lists of n / nlist vectors each. FAISS's rule of thumb for
    the fastest search is 4-16 sqrt(n) lists, which took 8.7 minutes to build at 1M on two cores (4,000
    lists); at sqrt(n / 2), 707 lists on 45,000 training points build in well under a minute there, and a
    query at 1M scans 9% of the vectors (AUTO_NPROBE lists) for recall@10 >= 0.95.
    """
    return max(1, min(round(math.sqrt(count / 2)), count // _MIN_POINTS_PER_LIST, _MAX_NLIST))


def choose_nprobe(nlist: int, setting: int = 0) -> int:
    """Lists searched per query: the setting when positive, else AUTO_NPROBE; never more than there are."""
    return min(nlist, setting if setting > 0 else AUTO_NPROBE)


def training_size(count: int, nlist: int) -> int:
    """Vectors k-means trains the IVF centroids on: TRAIN_POINTS_PER_LIST per list, at most all of them."""
    return min(count, TRAIN_POINTS_PER_LIST * nlist)


def _new_ivf(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    count, dim = vectors.shape
    nlist = choose_nlist(count)
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    train_size = training_size(count, nlist)
    # A fixed seed makes a rebuild from the same database reproducible.
    sample = np.random.default_rng(0).choice(count, size=train_size, replace=False)
    started = time.perf_counter()
    index.train(vectors[np.sort(sample)])
    trained = time.perf_counter()
    index.add_with_ids(vectors, ids)
    log.info(
        "built IVF index: %d vectors, %d lists, trained on %d in %.1f s, added in %.1f s",
        count,
        nlist,
        train_size,
        trained - started,
        time.perf_counter() - trained,
    )
    return index


def _exact_among(
    index: faiss.Index, batch: np.ndarray, k: int, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over the vectors of `ids` alone, read back from the index."""
    vectors = np.vstack([index.reconstruct(int(i)) for i in ids]).astype(np.float32)
    scores = batch @ vectors.T
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, best, axis=1), ids[best]


def _new_hnsw(ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    count, dim = vectors.shape
    index = faiss.index_factory(dim, f"IDMap2,HNSW{settings.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(index.index).hnsw.efConstruction = settings.hnsw_ef_construction
    started = time.perf_counter()
    index.add_with_ids(vectors, ids)
    log.info(
        "built HNSW index: %d vectors, M=%d in %.1f s", count, settings.hnsw_m, time.perf_counter() - started
    )
    return index


def _is_hnsw(index: faiss.Index) -> bool:
    return isinstance(index, faiss.IndexIDMap2) and isinstance(
        faiss.downcast_index(index.index), faiss.IndexHNSW
    )


def _hide_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove ids from an IDMap2-wrapped HNSW graph, which cannot delete: their entries get id -1, which
    searches filter out (_LIVE_IDS). Returns how many entries were hidden."""
    id_map = faiss.vector_to_array(index.id_map)
    hidden = np.isin(id_map, ids)
    id_map[hidden] = -1
    faiss.copy_array_to_vector(id_map, index.id_map)
    index.construct_rev_map()
    return int(hidden.sum())


def _configure(index: faiss.Index, settings: IndexSettings) -> faiss.Index:
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = choose_nprobe(index.nlist, settings.nprobe)
    elif _is_hnsw(index):
        faiss.downcast_index(index.index).hnsw.efSearch = settings.hnsw_ef_search
    return index


def _layout(index: faiss.Index) -> str | None:
    """The manifest's index_type for an index of a supported layout, else None."""
    if isinstance(index, faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat):
            return f"hnsw{inner.hnsw.nb_neighbors(1)},flat"
        return "flat" if isinstance(inner, faiss.IndexFlat) else None
    if isinstance(index, faiss.IndexIVFFlat):
        return f"ivf{index.nlist},flat"
    return None


def _mismatch(index: faiss.Index, manifest: IndexManifest, live: int) -> str | None:
    layout = _layout(index)
    if layout is None:
        return f"unsupported index class {type(index).__name__}"
    if layout != manifest.index_type:
        return f"layout {layout!r}, manifest says {manifest.index_type!r}"
    if index.d != manifest.dim:
        return f"dimension {index.d}, manifest says {manifest.dim}"
    if live != manifest.count:
        return f"{live} vectors, manifest says {manifest.count}"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT or manifest.metric != METRIC:
        return f"metric is not {METRIC}"
    return None


def _stored_ids(index: faiss.Index) -> np.ndarray:
    """The ids the index itself holds (not the cached mirror), sorted; hidden HNSW entries (-1) left out."""
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
        return np.sort(ids[ids >= 0])
    if isinstance(index, faiss.IndexIVF):
        lists = index.invlists
        parts = [np.empty(0, dtype=np.int64)]
        for list_no in range(index.nlist):
            size = lists.list_size(list_no)
            if size == 0:
                continue
            pointer = lists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).astype(np.int64, copy=True))
            lists.release_ids(list_no, pointer)
        return np.sort(np.concatenate(parts))
    raise IndexCorruptError(f"unsupported index class {type(index).__name__}")


def _check_model(
    directory: Path, manifest: IndexManifest, expected_model_id: str | None, expected_dim: int | None
) -> None:
    model_differs = expected_model_id is not None and expected_model_id != manifest.model_id
    dim_differs = expected_dim is not None and expected_dim != manifest.dim
    if model_differs or dim_differs:
        configured_model = expected_model_id if expected_model_id is not None else manifest.model_id
        configured_dim = expected_dim if expected_dim is not None else manifest.dim
        raise ModelMismatchError(
            f"index at {directory} was built with model {manifest.model_id} (dim {manifest.dim}); "
            f"the configured model is {configured_model} (dim {configured_dim}). Use the model the "
            "collection was built with, or index into a new collection/data dir."
        )


# ---- input checks -----------------------------------------------------------------------------------


def _as_id_array(ids: Any) -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise VectorInputError(f"ids must be a 1-D array; got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, dtype=np.int64)
    if array.dtype.kind not in "iu":
        raise VectorInputError(f"ids must be integers (database primary keys); got dtype {array.dtype}")
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        raise VectorInputError("ids must fit in a signed 64-bit integer")
    return array.astype(np.int64, copy=False)


def _checked_new_ids(ids: Any) -> np.ndarray:
    array = _as_id_array(ids)
    if array.size and array.min() < 0:
        negative = _preview(array[array < 0])
        raise VectorInputError(f"ids must be non-negative (-1 means 'no result'); got {negative}")
    unique, counts = np.unique(array, return_counts=True)
    if len(unique) != len(array):
        raise VectorInputError(f"ids repeated within one batch: {_preview(unique[counts > 1])}")
    return np.ascontiguousarray(array)


def _checked_vectors(vectors: Any, dim: int, what: str, *, allow_single: bool = False) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array of unit rows; raises VectorInputError on anything else."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise VectorInputError(f"{what} must be a numeric array: {exc}") from exc
    if allow_single and array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise VectorInputError(f"{what} must have shape (n, {dim}) for this index; got {array.shape}")
    if array.size == 0:
        return np.ascontiguousarray(array)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise VectorInputError(f"{what} rows {_preview(np.flatnonzero(~finite))} contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    if (norms < 1e-12).any():
        raise VectorInputError(f"{what} rows {_preview(np.flatnonzero(norms < 1e-12))} are all zeros")
    if (np.abs(norms - 1.0) > _NORM_TOLERANCE).any():
        # Inner product is only cosine similarity on unit vectors; the caller should have normalised.
        array = array / norms[:, np.newaxis]
    return np.ascontiguousarray(array, dtype=np.float32)


# ---- small helpers ----------------------------------------------------------------------------------


def _contained_in(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which `values` occur in the sorted array `sorted_ids`."""
    if sorted_ids.size == 0:
        return np.zeros(values.shape, dtype=bool)
    positions = np.searchsorted(sorted_ids, values).clip(max=sorted_ids.size - 1)
    return sorted_ids[positions] == values


def _insert_sorted(sorted_ids: np.ndarray, new_sorted: np.ndarray) -> np.ndarray:
    return np.insert(sorted_ids, np.searchsorted(sorted_ids, new_sorted), new_sorted)


def _preview(values: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(v)) for v in values[:limit])
    return shown if len(values) <= limit else f"{shown} (and {len(values) - limit} more)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_durably(path: Path, data: bytes | memoryview) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    # Makes the renames themselves durable; directories cannot be opened for fsync on Windows.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
