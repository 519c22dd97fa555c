"""Approximate search on real, clustered embeddings: build time, recall@10 against exact search, latency.

The vectors are real: all-MiniLM-L6-v2 (the packaged copy mmrag's text space loads) embeddings of the text
chunks of Debian's manuals, cut by mmrag's own PDF extractor: gnuplot-doc's gnuplot.pdf and r-doc-pdf's R
manuals, whichever are installed (`apt-get install gnuplot-doc r-doc-pdf`). The queries are real too: the
manuals' outline titles, embedded by the same model. Computing them takes minutes on two cores, so they are
cached (`$XDG_CACHE_HOME/mmrag-bench/`, keyed by the PDFs' names, sizes and the model).

To reach 100k or 1M items the chunks are tiled: every item is a chunk's vector plus Gaussian noise, then
normalised. The noise is as large as the median distance from a chunk to its nearest other chunk, so each
copy sits as far from its source as the source's nearest real neighbour: the tiled set keeps the manuals'
clusters at their own scale instead of being either exact duplicates or uniform noise.

Each layout is built through `VectorIndex.rebuild` (the call mmrag makes), and recall@10 is measured
against exact (flat) search over the same vectors, for the outline-title queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

R_MANUALS = Path("/usr/share/R/doc/manual")
# fullrefman/refman repeat every help page of base R (3,700 pages): more of one kind of text, not more kinds.
_R_MANUAL_NAMES = ("R-intro", "R-data", "R-admin", "R-lang", "R-exts", "R-ints", "R-FAQ")
_ENCODE_BATCH = 2048
_NOISE_SAMPLE = 4000  # chunks whose nearest neighbour sets the noise scale
_TILE_CHUNK = 100_000


@dataclass(frozen=True)
class Corpus:
    """Real embeddings of manual chunks and of their outline titles (unit rows, float32)."""

    chunks: np.ndarray  # (n_chunks, dim)
    queries: np.ndarray  # (n_queries, dim)
    sources: list[str]  # the PDFs they came from
    model: str


def manual_pdfs() -> list[Path]:
    """The installed manuals this benchmark reads: gnuplot's, then R's."""
    from mmrag.evaluation.datasets import GNUPLOT_PDF

    candidates = [GNUPLOT_PDF, *(R_MANUALS / f"{name}.pdf" for name in _R_MANUAL_NAMES)]
    return [path for path in candidates if path.is_file()]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmrag-bench"


def embedded_corpus(pdfs: list[Path] | None = None, cache: Path | None = None) -> Corpus:
    """MiniLM vectors of the PDFs' chunks and outline titles, from the cache when it holds them."""
    from mmrag.embed.text import DEFAULT_TEXT_MODEL

    pdfs = manual_pdfs() if pdfs is None else pdfs
    if not pdfs:
        raise FileNotFoundError(
            "no manual PDFs found: apt-get install gnuplot-doc r-doc-pdf (or pass PDFs with outlines)"
        )
    key = hashlib.sha1(
        json.dumps([[str(p), p.stat().st_size] for p in pdfs] + [DEFAULT_TEXT_MODEL]).encode()
    ).hexdigest()[:12]
    path = (cache or cache_dir()) / f"minilm-manuals-{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return Corpus(stored["chunks"], stored["queries"], [str(p) for p in pdfs], DEFAULT_TEXT_MODEL)
    chunks, titles = _manual_texts(pdfs)
    from mmrag.embed.text import TextEmbedder

    embedder = TextEmbedder(DEFAULT_TEXT_MODEL, device="cpu", batch_size=64)
    started = time.perf_counter()
    chunk_vectors = np.concatenate(
        [embedder.encode(chunks[i : i + _ENCODE_BATCH]) for i in range(0, len(chunks), _ENCODE_BATCH)]
    )
    query_vectors = embedder.encode(titles)
    log.info(
        "embedded %d chunks and %d titles in %.0f s", len(chunks), len(titles), time.perf_counter() - started
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(partial, chunks=chunk_vectors, queries=query_vectors)
    os.replace(partial, path)
    return Corpus(chunk_vectors, query_vectors, [str(p) for p in pdfs], DEFAULT_TEXT_MODEL)


def _manual_texts(pdfs: list[Path]) -> tuple[list[str], list[str]]:
    """Every text chunk mmrag's extractor cuts from the PDFs, and their distinct outline titles."""
    import pymupdf

    from mmrag.ingest.pdf import extract_pdf
    from mmrag.settings import IngestSettings

    settings = IngestSettings()
    chunks: list[str] = []
    titles: dict[str, None] = {}
    for pdf in pdfs:
        chunks += [item.text for item in extract_pdf(pdf, settings) if item.text]
        with pymupdf.open(pdf) as doc:
            for _level, title, _page in doc.get_toc(simple=True):
                title = " ".join(title.split())
                if len(title) > 3:
                    titles.setdefault(title, None)
    return chunks, list(titles)


def nearest_neighbour_distance(vectors: np.ndarray, sample: int = _NOISE_SAMPLE, seed: int = 0) -> float:
    """Median Euclidean distance from a (sampled) vector to its nearest other vector."""
    import faiss

    rng = np.random.default_rng(seed)
    picked = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, _ = index.search(vectors[picked], 2)  # the first hit is the vector itself
    return float(np.median(np.sqrt(np.clip(2.0 - 2.0 * scores[:, 1], 0.0, None))))


def tile_with_noise(base: np.ndarray, count: int, noise: float, seed: int = 0) -> np.ndarray:
    """`count` unit rows: base rows in turn (each used count/len(base) times), plus N(0, noise^2/dim) per
    coordinate (a displacement of length ~noise), normalised. The first len(base) rows are the originals."""
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    out = np.empty((count, dim), dtype=np.float32)
    scale = np.float32(noise / np.sqrt(dim))
    for start in range(0, count, _TILE_CHUNK):
        rows = np.arange(start, min(start + _TILE_CHUNK, count))
        block = base[rows % len(base)].copy()
        jittered = rows >= len(base)
        block[jittered] += scale * rng.standard_normal((int(jittered.sum()), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[rows] = block
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k ids that the approximate top-k holds."""
    hits = [len(np.intersect1d(f[:k][f[:k] >= 0], e[:k])) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / k


def bench_ann(
    sizes: list[int],
    layouts: tuple[str, ...] = ("ivf", "hnsw"),
    n_queries: int = 1000,
    k: int = 10,
    hnsw_max_items: int = 1_000_000,
    corpus: Corpus | None = None,
) -> dict[str, Any]:
    """Per size: exact search (the floor), then each approximate layout built by VectorIndex.rebuild, with
    build time, recall@k against exact, and one-at-a-time search latency; IVF also at other nprobes and
    HNSW at other efSearch values, to show where the defaults sit."""
    corpus = corpus or embedded_corpus()
    noise = nearest_neighbour_distance(corpus.chunks)
    queries = corpus.queries[:n_queries]
    rows: list[dict[str, Any]] = []
    for size in sizes:
        vectors = tile_with_noise(corpus.chunks, size, noise, seed=size)
        ids = np.arange(1, size + 1, dtype=np.int64)
        exact_ids, exact_ms = _exact(vectors, ids, queries, k)
        for layout in layouts:
            if layout == "hnsw" and size > hnsw_max_items:
                rows.append(
                    {"items": size, "layout": "hnsw", "skipped": f"above --hnsw-max-items {hnsw_max_items}"}
                )
                continue
            rows.append(_measure(layout, ids, vectors, queries, exact_ids, exact_ms, k))
            log.info("ann %s at %d: %s", layout, size, rows[-1])
        del vectors
    return {
        "corpus": {
            "chunks": len(corpus.chunks),
            "queries": len(queries),
            "dim": int(corpus.chunks.shape[1]),
            "model": corpus.model,
            "sources": corpus.sources,
            "noise": noise,
        },
        "k": k,
        "rows": rows,
    }


def _exact(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, dict[str, float]]:
    import faiss

    from bench.common import latency_summary

    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    flat.add_with_ids(vectors, ids)
    _, exact_ids = flat.search(queries, k)
    return exact_ids, latency_summary(_one_at_a_time(lambda q: flat.search(q, k), queries[:100]))


def _one_at_a_time(search: Any, queries: np.ndarray) -> list[float]:
    seconds = []
    for row in range(len(queries)):
        started = time.perf_counter()
        search(queries[row : row + 1])
        seconds.append(time.perf_counter() - started)
    return seconds


def _measure(
    layout: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    exact_latency: dict[str, float],
    k: int,
) -> dict[str, Any]:
    import faiss

    from bench.common import latency_summary
    from mmrag.index.vector_index import VectorIndex, choose_nlist, choose_nprobe, training_size
    from mmrag.settings import IndexSettings

    settings = IndexSettings(use_gpu="never", ivf_min_items=1000, ann=layout)
    index = VectorIndex.create("text.text", "bench", vectors.shape[1], settings)
    started = time.perf_counter()
    index.rebuild(ids, vectors)
    build_s = time.perf_counter() - started
    _, found = index.search(queries, k)
    row: dict[str, Any] = {
        "items": len(ids),
        "layout": index.manifest.index_type,
        "build_s": build_s,
        "recall_at_k": recall_at_k(found, exact_ids, k),
        "search": latency_summary(_one_at_a_time(lambda q: index.search(q, k), queries[:100])),
        "exact_search": exact_latency,
    }
    raw = index._index  # the FAISS object, to sweep its search-time knob without rebuilding
    sweep: dict[str, float] = {}
    if layout == "ivf":
        nlist = choose_nlist(len(ids))
        row.update(nlist=nlist, nprobe=choose_nprobe(nlist), train_points=training_size(len(ids), nlist))
        default = raw.nprobe
        for nprobe in sorted({4, 8, 16, 32, 64, 128, default}):
            raw.nprobe = min(nprobe, nlist)
            _, found = raw.search(queries, k)
            sweep[str(nprobe)] = recall_at_k(found, exact_ids, k)
        raw.nprobe = default
        row["recall_by_nprobe"] = sweep
    else:
        hnsw = faiss.downcast_index(raw.index).hnsw
        row.update(hnsw_m=settings.hnsw_m, ef_search=settings.hnsw_ef_search)
        for ef in (16, 32, 64, 128, 256):
            hnsw.efSearch = ef
            _, found = raw.search(queries, k)
            sweep[str(ef)] = recall_at_k(found, exact_ids, k)
        hnsw.efSearch = settings.hnsw_ef_search
        row["recall_by_ef_search"] = sweep
    return row


def main() -> None:  # pragma: no cover - `python -m bench.ann` fills the cache
    logging.basicConfig(level=logging.INFO)
    corpus = embedded_corpus()
    print(f"{len(corpus.chunks)} chunks, {len(corpus.queries)} queries from {len(corpus.sources)} PDFs")
    print(f"median nearest-neighbour distance {nearest_neighbour_distance(corpus.chunks):.3f}")


if __name__ == "__main__":  # pragma: no cover
    main()
