"""Query latency at scale: `Retriever.search` against its floor (query encode + FAISS search) at each size.

For each collection size N the step writes N items into a real mmrag database (SQLite; one document per
10 items, as PDFs with several figures would give) and N random unit vectors (the index does not care what
they mean) into the FAISS vector store in each layout, flat and IVF (through `optimise`: what mmrag itself
does when a collection grows past index.ivf_min_items). Then, per query text:

- floor: the CLIP text tower encodes the query, then FAISS searches the index at the depth the retriever
  asks for (max(3k, 30));
- full: `Retriever.search(text, k)`: the same two steps, plus the lexical (BM25) list, the database
  lookup of every hit and calibrated fusion, which is what `mmrag query` and the service run;
- dense: the same search with the lexical list off (`retrieve.lexical: false`), timed query by query
  beside `full`, so their ratio is the lexical list's cost in the same run.

Every item holds a caption like the caption road writes ("a photo of a tench, goldfish, great white
shark": three ImageNet labels drawn at random), indexed for lexical search in the same database: every
query ("a photo of a ...") shares the word "photo" with every item, the worst case the lexical list meets.

The text tower runs on each query's real tokens (mmrag.embed.clip_text). At the first size, flat, the
floor and the full search are also timed with the tower run padded to 77 tokens, as before that change,
query by query in turn with the trimmed run. The query cache is off: every query here is encoded.

Vectors live only in the index here: the database's copy of each vector (float16, used to repair and
rebuild indexes) is not written, because no query reads it. The query encoder is open_clip ViT-B-32 with
random weights (512-d): the same cost as trained weights.
"""

from __future__ import annotations

import gc
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import latency_summary, random_clip_checkpoint, rss_bytes, timed
from mmrag.settings import Settings, load_settings
from mmrag.store import lexical

log = logging.getLogger(__name__)

SPACE, MODALITY = "clip", "image"
ITEMS_PER_DOCUMENT = 10
_VECTOR_CHUNK = 100_000  # rows generated at a time: bounds the temporary float64 normal draws
_ROW_CHUNK = 50_000


def random_unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    """(count, dim) float32 rows drawn uniformly on the unit sphere."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, _VECTOR_CHUNK):
        block = rng.standard_normal((min(_VECTOR_CHUNK, count - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def captions(count: int, seed: int = 0) -> list[str]:
    """What the caption road writes for `count` photos: "a photo of a" and three ImageNet labels."""
    from mmrag.caption.efficientnet import imagenet_labels

    labels = list(imagenet_labels())
    rng = random.Random(seed)
    return [f"a photo of a {', '.join(rng.sample(labels, 3))}" for _ in range(count)]


def fill_database(db: Any, collection: str, count: int) -> None:
    """Documents and items 1..count as mmrag's tables hold them, with their captions in the lexical index,
    written with the driver's executemany (the ORM would take minutes at a million rows; what is measured
    later is reading them)."""
    stamp = "2025-01-01 00:00:00.000000"
    texts = captions(count)
    documents = (count + ITEMS_PER_DOCUMENT - 1) // ITEMS_PER_DOCUMENT
    with db.engine.begin() as connection:
        for start in range(0, documents, _ROW_CHUNK):
            connection.exec_driver_sql(
                "INSERT INTO documents (id, collection, path, kind, content_hash, size, mtime, status, "
                "error, meta, created_at, updated_at) VALUES (?, ?, ?, 'pdf', ?, 100000, 0.0, 'indexed', "
                "NULL, '{}', ?, ?)",
                [
                    (d, collection, f"/bench/library/doc-{d:07d}.pdf", f"{d:064x}", stamp, stamp)
                    for d in range(start + 1, min(start + _ROW_CHUNK, documents) + 1)
                ],
            )
        for start in range(0, count, _ROW_CHUNK):
            connection.exec_driver_sql(
                "INSERT INTO items (id, document_id, collection, modality, page, bbox, text, thumbnail, "
                "content_hash, meta, created_at) VALUES (?, ?, ?, ?, ?, '[0, 0, 100, 100]', ?, ?, ?, "
                "'{}', ?)",
                [
                    (
                        i,
                        (i - 1) // ITEMS_PER_DOCUMENT + 1,
                        collection,
                        MODALITY,
                        (i - 1) % ITEMS_PER_DOCUMENT + 1,
                        texts[i - 1],
                        f"thumbnails/{i % 256:02x}/{i:064x}.webp",
                        f"{i:064x}",
                        stamp,
                    )
                    for i in range(start + 1, min(start + _ROW_CHUNK, count) + 1)
                ],
            )
            connection.exec_driver_sql(
                f"INSERT INTO {lexical.TABLE} (rowid, text, collection, modality) VALUES (?, ?, ?, ?)",
                [
                    (i, texts[i - 1], collection, MODALITY)
                    for i in range(start + 1, min(start + _ROW_CHUNK, count) + 1)
                ],
            )


def query_texts(count: int, seed: int = 0) -> list[str]:
    """Short prompts over ImageNet's class names: a realistic spread of query lengths."""
    from mmrag.caption.efficientnet import imagenet_labels

    labels = random.Random(seed).sample(list(imagenet_labels()), count)
    return [f"a photo of a {label}" for label in labels]


def bench_queries(
    work: Path,
    sizes: list[int],
    n_queries: int,
    dim: int = 512,
    k: int = 10,
    ivf_max_items: int = 100_000,
) -> list[dict[str, Any]]:
    """One result per (size, layout); IVF is skipped above `ivf_max_items` (its training time grows with
    lists x points: see the note in the result)."""
    from mmrag.embed.clip import ClipEmbedder
    from mmrag.index.vector_index import choose_nlist
    from mmrag.store.db import Database

    model_id, _ = random_clip_checkpoint()
    models = {"clip": model_id, "device": "cpu", "query_cache_size": 0}  # every query is encoded
    base = load_settings(None, data_dir=work / "query", models=models)
    encoder = ClipEmbedder(base.models)
    padded = ClipEmbedder(base.models, trim_text=False)
    if encoder.dim != dim:
        raise ValueError(f"the query encoder gives {encoder.dim}-d vectors, not {dim}")
    texts = query_texts(n_queries)
    depth = max(k * 3, 30)  # what Retriever.search asks each index for
    results: list[dict[str, Any]] = []
    for size in sizes:
        data_dir = work / f"query-{size}"
        shutil.rmtree(data_dir, ignore_errors=True)
        settings = base.model_copy(update={"data_dir": data_dir, "collection": "bench"})
        db = Database(settings.db_url)
        _, db_s = timed(lambda: fill_database(db, settings.collection, size))  # noqa: B023
        vectors = random_unit_vectors(size, dim, seed=size)
        ids = np.arange(1, size + 1, dtype=np.int64)
        for layout in ("flat", "ivf"):
            if layout == "ivf" and size > ivf_max_items:
                results.append(
                    {
                        "items": size,
                        "layout": "ivf",
                        "skipped": f"IVF above {ivf_max_items} items not built in this run: training "
                        f"{choose_nlist(size)} lists on up to {size} points takes tens of minutes on a "
                        "few cores (raise --ivf-max-items to measure it)",
                    }
                )
                continue
            before = padded if (size, layout) == (sizes[0], "flat") else None
            row = _measure_layout(
                settings, db, encoder, model_id, layout, ids, vectors, texts, k, depth, before
            )
            row["db_fill_s"] = db_s
            results.append(row)
            log.info("queries at %d items, %s: %s", size, layout, row["full"])
        db.close()
        del vectors, ids
        gc.collect()
        shutil.rmtree(data_dir, ignore_errors=True)  # a million-item database is ~0.5 GB
    return results


def _measure_layout(
    settings: Settings,
    db: Any,
    encoder: Any,
    model_id: str,
    layout: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    texts: list[str],
    k: int,
    depth: int,
    padded: Any = None,
) -> dict[str, Any]:
    """Build one index layout over (ids, vectors), then time every query's floor and full search (and
    with `padded`, the same with the text tower run on 77 tokens, in turn with the trimmed runs)."""
    from mmrag.collection import Collection
    from mmrag.retrieve.search import Retriever

    size, dim = vectors.shape
    key = f"{SPACE}.{MODALITY}"
    # The store relayouts by size (flat below index.ivf_min_items, IVF above): move the threshold to either
    # side of this size, then let it rebuild from these vectors, as mmrag does when a collection grows.
    index_settings = settings.index.model_copy(
        update={"backend": "faiss", "ivf_min_items": 1000 if layout == "ivf" else max(1000, size + 1)}
    )
    collection = Collection(settings.model_copy(update={"index": index_settings}), db, [encoder])
    store = collection.store
    gc.collect()
    rss_before = rss_bytes()
    store.ensure(key, model_id, dim)
    started = time.perf_counter()
    store.upsert(key, ids, vectors, [])  # the FAISS store keeps no payload
    if layout == "ivf":  # an empty index has nothing to relayout: fill it flat, then time the IVF rebuild
        started = time.perf_counter()
        if store.optimise(lambda _key: (ids, vectors)) != [key]:
            raise RuntimeError(f"the store did not relayout {key} at {size} items")
    build_s = time.perf_counter() - started
    rss_after = rss_bytes()
    started = time.perf_counter()
    store.persist(0)
    save_s = time.perf_counter() - started
    file_bytes = sum(p.stat().st_size for p in (settings.index_dir() / key).glob("*"))
    collection.generation = 0
    collection.dims = {SPACE: dim}
    stages: dict[str, list[float]] = {}

    def on_stage(stage: str, seconds: float) -> None:
        stages.setdefault(stage, []).append(seconds)

    retriever = Retriever(collection, [encoder], fusion="calibrated", on_stage=on_stage)
    dense = Retriever(collection, [encoder], fusion="calibrated", lexical=False)
    before = Retriever(collection, [padded], fusion="calibrated") if padded is not None else None
    for warming in (retriever, dense, before):  # fits the calibration and warms every cache, untimed
        if warming is not None:
            warming.search(texts[0], k=k)
    stages.clear()

    def floor_of(text: str, enc: Any, into: dict[str, list[float]]) -> None:
        started = time.perf_counter()
        query = enc.encode_texts([text])
        encoded = time.perf_counter()
        store.search(key, query, depth)
        finished = time.perf_counter()
        into["encode"].append(encoded - started)
        into["search"].append(finished - encoded)
        into["floor"].append(finished - started)

    def searched(ret: Any, text: str, times: list[float]) -> int:
        begun = time.perf_counter()
        found = ret.search(text, k=k)
        times.append(time.perf_counter() - begun)
        return len(found)

    now: dict[str, list[float]] = {"full": [], "dense": [], "encode": [], "search": [], "floor": []}
    then: dict[str, list[float]] = {"full": [], "encode": [], "search": [], "floor": []}
    returned = 0
    for number, text in enumerate(texts):
        floor_of(text, encoder, now)
        # alternating which goes first: neither always meets warm caches
        for searcher, times in [(retriever, now["full"]), (dense, now["dense"])][:: 1 if number % 2 else -1]:
            found = searched(searcher, text, times)
            returned += found if searcher is retriever else 0
        if before is not None:  # the padded text tower, query by query in turn with the trimmed one
            floor_of(text, padded, then)
            searched(before, text, then["full"])
    full, floor, dense_summary = (latency_summary(now[key]) for key in ("full", "floor", "dense"))
    encode_s, search_s = now["encode"], now["search"]
    padded_row = {}
    if before is not None:
        padded_row = {
            "padded_77_tokens": {
                "full": latency_summary(then["full"]),
                "floor": latency_summary(then["floor"]),
                "encode": latency_summary(then["encode"]),
            }
        }
    return {
        "items": size,
        "layout": store.describe(key).type,
        "dim": dim,
        "queries": len(texts),
        "k": k,
        "depth": depth,
        "mean_hits_returned": returned / len(texts),
        "build_s": build_s,
        "build_items_per_s": size / build_s if build_s > 0 else None,
        "save_s": save_s,
        "index_file_bytes_per_item": file_bytes / size,
        "rss_bytes_per_item": (rss_after - rss_before) / size,
        "full": full,
        "floor": floor,
        "encode": latency_summary(encode_s),
        "faiss_search": latency_summary(search_s),
        "full_vs_floor_p50": full["p50_ms"] / floor["p50_ms"],
        "full_vs_floor_p99": full["p99_ms"] / floor["p99_ms"],
        "dense": dense_summary,
        "lexical_stage": latency_summary(stages.get("lexical", [0.0])),  # the BM25 query alone, in `full`
        "full_vs_dense_p50": full["p50_ms"] / dense_summary["p50_ms"],
        "text_tokens": "real" if encoder.trims_text else "padded",
        **padded_row,
    }
