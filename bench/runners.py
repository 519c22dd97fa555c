"""Runners: the same photos indexed by the local runner and by the Ray runner (1, then 2 model workers) in
the same run, on a Ray cluster started on this machine, with the per-stage rates that an estimate for N GPU
workers rests on.

- local: `mmrag index` in this process (models loaded and warmed before the clock starts);
- ray, W workers: the Ray runner with W CLIP actors; "end to end" counts the actors' start and model load
  (what one run pays); "steady" is the rate once they run: (N - n) / (T_N - T_n) from a run of all N images
  and a run of the first n = 8, each on a fresh collection, so the fixed cost cancels out;
- stage rates: extraction (read, hash, decode, thumbnail, fit) on one thread; the CLIP forward inside the
  local run (the vectoriser's own clock); the driver's commit (one transaction per file, then FAISS).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import random_clip_checkpoint, timed
from bench.ingest import _run_indexer, write_photo_variants
from mmrag.settings import Settings, load_settings

_FEW = 8


def _settings(data_dir: Path, batch_size: int, **ingest: Any) -> Settings:
    model_id, _ = random_clip_checkpoint()
    return load_settings(
        None,
        data_dir=data_dir,
        models={"clip": model_id, "batch_size": batch_size, "device": "cpu"},
        spaces={"clip": True, "text": False},
        ingest={"road": "clip", **ingest},
        caption={"backend": "none", "ocr": False},
    )


def _ray_run(settings: Settings, folder: Path) -> dict[str, float]:
    from mmrag.ingest.runners import make_runner
    from mmrag.runtime import open_runtime

    runtime = open_runtime(settings)
    try:
        runner = make_runner("ray", settings, runtime.collection, runtime.vectoriser())
        started = time.perf_counter()
        with runtime.collection.writer():
            report = runner.run([folder])
        total = time.perf_counter() - started
    finally:
        runtime.close()
    if report.failed or not report.indexed:
        raise RuntimeError(
            f"bench: the Ray runner failed on {[(f.path, f.reason) for f in report.failed][:3]}"
        )
    return {"images": report.indexed, "seconds": total, "end_to_end": report.indexed / total}


def _extract_rate(settings: Settings, folder: Path) -> float:
    """Files/s of the extract stage on one thread: read, hash, decode, thumbnail, fit for the model."""
    from mmrag.blobs import FolderBlobStore
    from mmrag.ingest.plan import FileTask, plan
    from mmrag.ingest.stages import extract

    blobs = FolderBlobStore(settings.data_dir / "extract-only")
    tasks = [e for e in plan([folder], settings, lambda _paths: {}) if isinstance(e, FileTask)]

    def extract_all() -> None:
        for task in tasks:
            for _ in extract(task, settings, blobs):
                pass

    _, seconds = timed(extract_all)
    return len(tasks) / seconds


def _preprocess_rate(settings: Settings, folder: Path) -> float:
    """Images/s of open_clip's preprocessing (resize, crop, normalise) on one thread: on a GPU the forward is
    no longer the limit of a CLIP actor, this is (it runs on the actor's CPU)."""
    import open_clip
    import torch
    from PIL import Image

    from bench.common import CLIP_ARCH
    from mmrag.ingest.images import fit_for_model

    _, _, preprocess = open_clip.create_model_and_transforms(CLIP_ARCH, pretrained=None)
    images = []
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as opened:
            images.append(fit_for_model(opened.convert("RGB")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, seconds = timed(lambda: [preprocess(image) for image in images])
    finally:
        torch.set_num_threads(threads)
    return len(images) / seconds


def _commit_rate(settings: Settings, count: int) -> float:
    """Files/s of the commit stage alone: one photo's item and vector per file, one transaction each."""
    from mmrag.collection import NewItem
    from mmrag.runtime import open_runtime

    runtime = open_runtime(settings)
    try:
        assert runtime.clip is not None
        dim = runtime.clip.dim
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

        def commit_all() -> None:
            with runtime.collection.writer():
                for i, vector in enumerate(vectors):
                    runtime.collection.replace_document(
                        path=f"/bench/commit/{i:06d}.jpg",
                        kind="image",
                        content_hash=f"{i:064x}",
                        size=1,
                        mtime=0.0,
                        items=[NewItem("image", f"{i:064x}", vectors={"clip": vector})],
                    )
                runtime.collection.save()

        _, seconds = timed(commit_all)
    finally:
        runtime.close()
    return count / seconds


def bench_runners(
    work: Path, count: int, workers: tuple[int, ...] = (1, 2), batch_size: int = 32
) -> dict[str, Any]:
    import ray

    photos = write_photo_variants(work / "photos", count)
    folder = photos[0].parent
    local_settings = _settings(work / "data-local", batch_size)
    runtime, local_s, stages, indexed = _run_indexer(local_settings, folder)
    runtime.close()
    rates: dict[str, float] = {"local": indexed / local_s}
    runs: dict[str, dict[str, float]] = {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    few = folder.parent / "photos-few"  # a run this small costs what a run pays before its first image
    few.mkdir(exist_ok=True)
    for photo in photos[: min(_FEW, max(1, len(photos) // 2))]:
        shutil.copy2(photo, few / photo.name)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    try:
        for count_workers in workers:
            # The CLIP actors share the cores with the extraction tasks: a fair split, never more than asked.
            per_worker = min(1.0, max(0.25, (cores - 0.5) / count_workers))
            ray_settings = {"workers": count_workers, "cpus_per_worker": per_worker, "extract_cpus": 0.5}
            name = f"ray_{count_workers}"
            small = _ray_run(
                _settings(work / f"data-{name}-few", batch_size, runner="ray", ray=ray_settings), few
            )
            full = _ray_run(
                _settings(work / f"data-{name}", batch_size, runner="ray", ray=ray_settings), folder
            )
            # What the cluster adds per image, once its actors run: the difference of the two runs.
            extra_images, extra_s = full["images"] - small["images"], full["seconds"] - small["seconds"]
            # A run too small to tell the cluster's fixed cost apart (--quick) measures no steady rate.
            steady = extra_images / extra_s if extra_images > 0 and extra_s > 0.5 else float("nan")
            runs[name] = {
                **full,
                "few_images": small["images"],
                "few_seconds": small["seconds"],
                "steady": steady,
            }
            rates[f"{name}_end_to_end"] = full["end_to_end"]
            rates[f"{name}_steady"] = steady
    finally:
        ray.shutdown()
    extract_rate = _extract_rate(local_settings, folder)
    preprocess_rate = _preprocess_rate(local_settings, folder)
    commit_rate = _commit_rate(_settings(work / "data-commit", batch_size), max(count, 64))
    model_s = stages.get("embed_clip", 0.0)
    shutil.rmtree(work / "data-local" / "extract-only", ignore_errors=True)
    return {
        "unit": "images",
        "count": indexed,
        "cores": cores,
        "images_per_s": rates,
        "ray_runs": runs,
        "stage_rates": {
            "extract_files_per_s_one_thread": extract_rate,
            "clip_forward_images_per_s_one_worker": indexed / model_s if model_s > 0 else float("nan"),
            "clip_preprocess_images_per_s_one_thread": preprocess_rate,
            "commit_files_per_s": commit_rate,
        },
        "about": {
            "model": "open_clip ViT-B-32 (random weights)",
            "batch_size": batch_size,
            "workers": workers,
        },
    }
