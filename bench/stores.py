"""FAISS and Milvus Lite side by side through mmrag's vector-store interface (`--steps stores`).

For each size N the step writes N items into a real mmrag database (one document per 10 items, documents
spread over 100 folders, an "owner" in each document's metadata) and N random 512-d unit vectors into each
backend through `VectorStore.upsert` in batches of 10,000 (Milvus gets each item's payload: document id,
path, metadata). Then, per backend:

- insert: items/s of the upserts until acknowledged, and the time until the index is searchable
  (Milvus Lite: a flush, then its index build; FAISS: nothing more);
- query: p50/p99 of `Collection.search` at the depth the retriever asks (30) for random unit queries,
  without a filter, with a selective filter (10 documents: 100 items of N, pushed into the search: Milvus
  as a filter expression, FAISS as an IDSelector over the ids the database matched) and with a broad one
  (one folder of 100: 1% of N);
- recall@10 of the unfiltered search against exact search (FAISS flat is exact: 1.0);
- memory: resident memory per item added by the store (Milvus Lite runs in this process), and bytes on
  disk per item.

FAISS uses its default layout at that size (flat below index.ivf_min_items, 100,000: IVF from there, with
the same rebuild mmrag runs); Milvus uses its index type (`--milvus-index`, default AUTOINDEX, which Milvus
Lite builds as HNSW).
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import latency_summary, rss_bytes
from bench.query import ITEMS_PER_DOCUMENT, MODALITY, SPACE, random_unit_vectors
from mmrag.settings import load_settings

log = logging.getLogger(__name__)

DIM = 512
BATCH = 10_000
FOLDERS = 100
OWNERS = ("ann", "bob", "eve", "kim")


def fill_database(db: Any, collection: str, count: int) -> None:
    """Documents (in FOLDERS folders, with an owner) and items 1..count, with the driver's executemany."""
    stamp = "2025-01-01 00:00:00.000000"
    documents = (count + ITEMS_PER_DOCUMENT - 1) // ITEMS_PER_DOCUMENT
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO documents (id, collection, path, kind, content_hash, size, mtime, status, error, "
            "meta, created_at, updated_at) VALUES (?, ?, ?, 'pdf', ?, 1, 0.0, 'indexed', NULL, ?, ?, ?)",
            [
                (
                    d,
                    collection,
                    _path(d),
                    f"{d:064x}",
                    f'{{"owner": "{OWNERS[d % len(OWNERS)]}"}}',
                    stamp,
                    stamp,
                )
                for d in range(1, documents + 1)
            ],
        )
        connection.exec_driver_sql(
            "INSERT INTO items (id, document_id, collection, modality, content_hash, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, '{}', ?)",
            [
                (i, (i - 1) // ITEMS_PER_DOCUMENT + 1, collection, MODALITY, f"{i:064x}", stamp)
                for i in range(1, count + 1)
            ],
        )


def _path(document: int) -> str:
    return f"/bench/folder-{document % FOLDERS:03d}/doc-{document:07d}.pdf"


def _payloads(ids: np.ndarray) -> list[Any]:
    from mmrag.store.items import ItemPayload

    out = []
    for i in ids:
        document = (int(i) - 1) // ITEMS_PER_DOCUMENT + 1
        out.append(ItemPayload(int(i), MODALITY, document, _path(document), {"owner": OWNERS[document % 4]}))
    return out


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def bench_stores(
    work: Path,
    sizes: list[int],
    n_queries: int,
    milvus_index: str = "AUTOINDEX",
    k: int = 10,
    backends: tuple[str, ...] = ("faiss", "milvus"),
) -> list[dict[str, Any]]:
    from mmrag.filters import Filters
    from mmrag.store.db import Database

    results: list[dict[str, Any]] = []
    depth = max(3 * k, 30)
    for size in sizes:
        vectors = random_unit_vectors(size, DIM, seed=size)
        ids = np.arange(1, size + 1, dtype=np.int64)
        queries = random_unit_vectors(n_queries, DIM, seed=size + 1)
        exact = _exact_top(vectors, queries, k)
        documents = (size + ITEMS_PER_DOCUMENT - 1) // ITEMS_PER_DOCUMENT
        rng = np.random.default_rng(size)
        selective = Filters.of(document_ids=(rng.choice(documents, 10, replace=False) + 1).tolist())
        broad = Filters.of(path_prefixes=["/bench/folder-007"])
        for backend in backends:
            data_dir = work / f"stores-{size}-{backend}"
            shutil.rmtree(data_dir, ignore_errors=True)
            settings = load_settings(
                None,
                data_dir=data_dir,
                collection="bench",
                index={
                    "backend": backend,
                    "use_gpu": "never",
                    # a flush of Milvus Lite's memtable runs inside the upsert that fills it: minutes on a
                    # loaded machine at these sizes
                    "milvus": {"index_type": milvus_index, "timeout_s": 1800},
                },
            )
            db = Database(settings.db_url)
            fill_database(db, "bench", size)
            row = _measure(settings, db, backend, ids, vectors, queries, exact, depth, k, selective, broad)
            row.update(items=size, dim=DIM, queries=n_queries, k=k, depth=depth)
            results.append(row)
            log.info("stores at %d items, %s: %s", size, backend, row)
            db.close()
            shutil.rmtree(data_dir, ignore_errors=True)
            gc.collect()
        del vectors, ids
        gc.collect()
    return results


def _wait_for_milvus_index(store: Any, key: str, count: int, timeout_s: float = 3600) -> None:
    """Flush, then wait until Milvus has indexed every row (it builds in the background; a search before
    then scans the rows not indexed yet)."""
    name = store._name(key)
    store.client.flush(name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = store.client.describe_index(name, "vector")
        if int(described.get("indexed_rows", 0)) >= count and not int(described.get("pending_index_rows", 0)):
            break
        time.sleep(2)
    store.client.load_collection(name)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    top = np.empty((len(queries), k), dtype=np.int64)
    for row, query in enumerate(queries):
        scores = vectors @ query
        best = np.argpartition(-scores, k)[:k]
        top[row] = best[np.argsort(-scores[best])] + 1  # ids are positions + 1
    return top


class _Encoder:
    space, model_id, dim = SPACE, "bench/random-512", DIM


def _measure(
    settings: Any,
    db: Any,
    backend: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    depth: int,
    k: int,
    selective: Any,
    broad: Any,
) -> dict[str, Any]:
    from mmrag.collection import Collection

    key = f"{SPACE}.{MODALITY}"
    collection = Collection(settings, db, [_Encoder()])  # type: ignore[list-item]
    collection.dims = {SPACE: DIM}
    store = collection.store
    store.ensure(key, _Encoder.model_id, DIM)  # Milvus Lite's server starts here: not counted per item
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    for start in range(0, len(ids), BATCH):
        part = ids[start : start + BATCH]
        payloads = _payloads(part) if store.filters_payload else []
        store.upsert(key, part, vectors[start : start + BATCH], payloads)
    insert_s = time.perf_counter() - started
    started = time.perf_counter()
    if backend == "milvus":
        _wait_for_milvus_index(store, key, len(ids))
    else:  # IVF from index.ivf_min_items on, as mmrag does after a run (here from these vectors)
        store.optimise(lambda _key: (ids, vectors))
    ready_s = time.perf_counter() - started
    store.search(key, queries[:1], depth)  # first search: loads and warms, untimed
    gc.collect()
    rss_after = rss_bytes()
    store.persist(0)
    disk = _disk_bytes(settings.index_dir("bench")) + _disk_bytes(Path(settings.milvus_uri))

    timings: dict[str, list[float]] = {"none": [], "selective": [], "broad": []}
    hits: dict[str, int] = {"none": 0, "selective": 0, "broad": 0}
    recall = 0.0
    for row, query in enumerate(queries):
        for name, filters in (("none", None), ("selective", selective), ("broad", broad)):
            started = time.perf_counter()
            _, found = collection.search(SPACE, MODALITY, query, depth, filters)
            timings[name].append(time.perf_counter() - started)
            hits[name] += int((found[0] >= 0).sum())
            if name == "none":
                recall += len(set(found[0][:k].tolist()) & set(exact[row].tolist())) / k
    described = store.describe(key)
    store.close()
    count = len(ids)
    return {
        "backend": backend,
        "index": described.type,
        "insert_s": insert_s,
        "insert_items_per_s": count / insert_s,
        "ready_s": ready_s,
        "recall_at_10": recall / len(queries),
        "query": {name: latency_summary(seconds) for name, seconds in timings.items()},
        "mean_hits": {name: n / len(queries) for name, n in hits.items()},
        "rss_bytes_per_item": (rss_after - rss_before) / count,
        "disk_bytes_per_item": disk / count,
    }
