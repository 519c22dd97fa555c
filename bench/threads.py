"""Thread counts: what one more thread buys the work users wait for, on this machine, now.

For each count (torch and FAISS set together, as `mmrag --threads N` does) the step times, in the same
process and in interleaved rounds so that other jobs on the machine weigh on every count alike:

- a CLIP text query (ViT-B-32 text tower on the query's real tokens, random weights): p50 latency;
- the CLIP image tower on a ready batch of 32: images/s;
- an exact FAISS search of 100k 512-d vectors, one query at a time: p50 latency.

The `threads` default (mmrag.threads.resolve_threads) is read off these numbers on a shared 2-core machine
and on a many-core one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import random_clip_checkpoint

_ROUNDS = 3


def bench_threads(
    counts: list[int], queries: int = 20, images: int = 32, items: int = 100_000
) -> dict[str, Any]:
    import faiss
    import torch

    from bench.query import query_texts, random_unit_vectors
    from mmrag.embed.clip import ClipEmbedder
    from mmrag.settings import ModelSettings

    model_id, _ = random_clip_checkpoint()
    encoder = ClipEmbedder(ModelSettings(clip=model_id, device="cpu", query_cache_size=0))
    texts = query_texts(queries)
    batch = torch.randn(images, 3, 224, 224)
    index = faiss.IndexFlatIP(512)
    index.add(random_unit_vectors(items, 512, seed=1))
    probes = random_unit_vectors(queries, 512, seed=2)
    encoder.encode_texts(texts[:1])
    samples: dict[int, dict[str, list[float]]] = {n: {"query": [], "images": [], "faiss": []} for n in counts}
    for _ in range(_ROUNDS):
        for count in counts:
            torch.set_num_threads(count)
            faiss.omp_set_num_threads(count)
            encoder.encode_texts(texts[:1])  # the new team's first run is not a measurement
            for text in texts:
                started = time.perf_counter()
                encoder.encode_texts([text])
                samples[count]["query"].append(time.perf_counter() - started)
            with torch.inference_mode():
                started = time.perf_counter()
                encoder._model.encode_image(batch)
                samples[count]["images"].append(images / (time.perf_counter() - started))
            for row in range(len(probes)):
                started = time.perf_counter()
                index.search(probes[row : row + 1], 30)
                samples[count]["faiss"].append(time.perf_counter() - started)
    rows = [
        {
            "threads": count,
            "clip_query_p50_ms": 1000 * statistics.median(samples[count]["query"]),
            "clip_images_per_s": statistics.median(samples[count]["images"]),
            "faiss_flat_p50_ms": 1000 * statistics.median(samples[count]["faiss"]),
        }
        for count in counts
    ]
    return {"items": items, "queries": queries, "image_batch": images, "rounds": _ROUNDS, "rows": rows}


def default_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the cores, and the cores themselves."""
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return sorted({*counts, cores})


def summarise(result: dict[str, Any]) -> list[str]:
    best_query = min(result["rows"], key=lambda row: row["clip_query_p50_ms"])
    best_images = max(result["rows"], key=lambda row: row["clip_images_per_s"])
    return [
        f"fastest CLIP query at {best_query['threads']} thread(s) "
        f"({best_query['clip_query_p50_ms']:.1f} ms p50)",
        f"most CLIP images/s at {best_images['threads']} thread(s) ({best_images['clip_images_per_s']:.1f})",
    ]
