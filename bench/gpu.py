"""`python -m bench --gpu`: what a CUDA machine gives, in one run of a few minutes, each beside its floor.

- CLIP ViT-B-32 (random weights, fp16): images/s of `ClipEmbedder.encode_images` on decoded real photos
  (<= 1024 px), with the pixels uploaded as uint8 and resized, cropped and normalised on the GPU while the
  worker threads convert the next batch, against the bare forward on ready fp16 batches on the device (the
  floor); also the old way (open_clip's PIL transform per image on the calling thread, then the forward)
  and the preparation alone, to show where time goes.
- FAISS at 1M 512-d vectors: `VectorIndex.search` (the GPU clone mmrag makes), flat and IVF, one query at
  a time and in batches of 256, against bare FAISS on the GPU (flat) and the same searches on the CPU.
- Threads on this many-core CPU (bench/threads.py): the other half of the `threads` default's evidence.

`--gpu --quick` runs the same code on the CPU at toy sizes (fp32): it checks the run, it measures nothing.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import latency_summary, random_clip_checkpoint

log = logging.getLogger(__name__)

FULL = {"images": 2048, "batch": 256, "items": 1_000_000, "queries": 200, "ivf_min": 100_000}
QUICK = {"images": 8, "batch": 4, "items": 5_000, "queries": 5, "ivf_min": 1_000}
_PHOTO_FILES = 256  # distinct photos decoded; the image list repeats them to FULL["images"]


def bench_gpu(work: Path, quick: bool) -> dict[str, Any]:
    import torch

    from bench.threads import bench_threads, default_counts
    from mmrag.threads import usable_cores

    sizes = QUICK if quick else FULL
    if not quick and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device here; `--gpu --quick` checks the same code on the CPU")
    device = "cuda" if torch.cuda.is_available() and not quick else "cpu"
    result: dict[str, Any] = {"device": device, "sizes": sizes}
    result["clip"] = _clip(work, device, sizes)
    gc.collect()
    result["faiss"] = _faiss(device, sizes)
    counts = [1, 2] if quick else default_counts(usable_cores())
    result["threads"] = bench_threads(
        counts, queries=3 if quick else 20, images=4 if quick else 32, items=sizes["items"] // 10
    )
    return result


def _clip(work: Path, device: str, sizes: dict[str, int]) -> dict[str, Any]:
    import torch

    from bench.ingest import _open_images, write_photo_variants
    from mmrag.embed.clip import ClipEmbedder
    from mmrag.settings import ModelSettings

    photos = _open_images(write_photo_variants(work / "gpu-photos", min(_PHOTO_FILES, sizes["images"])))
    images = [photos[i % len(photos)] for i in range(sizes["images"])]
    model_id, _ = random_clip_checkpoint()
    embedder = ClipEmbedder(ModelSettings(clip=model_id, device=device, batch_size=sizes["batch"]))
    embedder.load()
    model, batcher, preprocess = embedder._model, embedder._images, embedder._preprocess
    assert batcher is not None

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    embedder.encode_images(images[: sizes["batch"]])  # warm: kernels chosen, pool started
    ready = list(batcher.batches(images, sizes["batch"]))  # the floor's input, prepared outside the clock
    sync()

    def timed(run: Any) -> float:
        sync()
        started = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - started

    def bare() -> None:
        with torch.inference_mode():
            for batch in ready:
                model.encode_image(batch)

    def old_way() -> None:
        with torch.inference_mode():
            for start in range(0, len(images), sizes["batch"]):
                batch = torch.stack([preprocess(im) for im in images[start : start + sizes["batch"]]])
                model.encode_image(batch.to(device, dtype=batcher.dtype)).float().cpu()

    seconds: dict[str, list[float]] = {
        "pipeline": [],
        "bare_forward": [],
        "prepare_only": [],
        "old_pil_path": [],
    }
    for _ in range(3):  # interleaved rounds: a slow moment weighs on every layer alike
        seconds["pipeline"].append(timed(lambda: embedder.encode_images(images)))
        seconds["bare_forward"].append(timed(bare))
        seconds["prepare_only"].append(timed(lambda: list(batcher.batches(images, sizes["batch"]))))
    seconds["old_pil_path"].append(timed(old_way))  # slow: once is enough
    rates = {name: len(images) / statistics.median(values) for name, values in seconds.items()}
    return {
        "model": "open_clip ViT-B-32 (random weights)",
        "precision": embedder.precision,
        "batch_size": sizes["batch"],
        "images": len(images),
        "preprocess_workers": batcher.workers,
        "tensor_preprocessing": batcher.transform is not None,
        "images_per_s": rates,
        "pipeline_vs_bare_forward": rates["pipeline"] / rates["bare_forward"],
        "seconds": seconds,
    }


def _faiss(device: str, sizes: dict[str, int]) -> dict[str, Any]:
    import faiss

    from bench.query import random_unit_vectors
    from mmrag.index import gpu
    from mmrag.index.vector_index import VectorIndex
    from mmrag.settings import IndexSettings

    items, dim = sizes["items"], 512
    vectors = random_unit_vectors(items, dim, seed=items)
    ids = np.arange(1, items + 1, dtype=np.int64)
    queries = random_unit_vectors(sizes["queries"], dim, seed=7)
    batch = random_unit_vectors(256, dim, seed=8)
    out: dict[str, Any] = {"items": items, "dim": dim, "gpu_available": gpu.gpu_available(), "rows": []}
    if device == "cuda" and gpu.gpu_available():
        floor = faiss.GpuIndexFlatIP(gpu._shared_resources(), dim)
        floor.add(vectors)
        out["bare_gpu_flat"] = _search_times(floor.search, queries, batch)
        del floor
    for threshold in (items + 1, sizes["ivf_min"]):  # flat, then IVF
        for use_gpu in ("auto", "never"):
            settings = IndexSettings(use_gpu=use_gpu, ivf_min_items=threshold)
            index = VectorIndex.create("clip.image", "bench", dim, settings)
            started = time.perf_counter()
            index.rebuild(ids, vectors)
            build_s = time.perf_counter() - started
            started = time.perf_counter()
            index.search(queries[:1], 30)  # the GPU clone is made on the first search
            first_s = time.perf_counter() - started
            row = {
                "layout": index.manifest.index_type,
                "device": index.device,
                "build_s": build_s,
                "first_search_s": first_s,
                **_search_times(lambda q, k, index=index: index.search(q, k), queries, batch),
            }
            out["rows"].append(row)
            log.info("gpu faiss %s", row)
            del index
            gc.collect()
    return out


def _search_times(search: Any, queries: np.ndarray, batch: np.ndarray) -> dict[str, Any]:
    seconds = []
    for row in range(len(queries)):
        started = time.perf_counter()
        search(queries[row : row + 1], 30)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    search(batch, 30)
    batch_s = time.perf_counter() - started
    return {"one_at_a_time": latency_summary(seconds), "batch_256_queries_per_s": len(batch) / batch_s}
