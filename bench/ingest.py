"""Ingest throughput: mmrag's whole pipeline against the bare model (or bare PyMuPDF) on the same input.

Each step times the pipeline and its floor (and a layer in between where there is one), in this process
on the same files, so their ratios hold on any machine:

- images, CLIP road: `Indexer.run` over JPEG files (discover, hash, decode, thumbnail, preprocess, ViT-B-32
  image tower, database commit, FAISS add, save) vs `ClipEmbedder.encode_images` on decoded images
  (preprocess + forward) vs open_clip's `encode_image` on ready tensors (the floor);
- images, offline profile (EfficientNet-Lite0 labels + RapidOCR -> MiniLM, configs/offline.yaml):
  `Indexer.run` vs the three models called bare on the same images;
- PDF: `Indexer.run` on a PDF with the offline profile (MiniLM text space) vs mmrag's extraction alone
  (`extract_pdf`: text blocks -> chunks) vs bare PyMuPDF (`page.get_text("blocks")`, the floor).

The photos are the real photos of the evaluation photo set (<= 1024 px), varied by crops and mirroring
so that every file has its own content (mmrag never writes one thumbnail twice).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bench.common import CLIP_ARCH, random_clip_checkpoint, timed
from mmrag.settings import Settings, load_settings

log = logging.getLogger(__name__)

OFFLINE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "offline.yaml"
_EMBED_SAMPLE = 1024


def write_photo_variants(folder: Path, count: int) -> list[Path]:
    """`count` distinct JPEGs cut from the evaluation set's real photos: each photo, then mirrored, then
    cropped ever tighter around its centre."""
    from mmrag.evaluation.datasets import build_photo_set

    source = folder.parent / f"{folder.name}-source"
    if not (source / "photos").is_dir():
        build_photo_set(source)
    originals = sorted((source / "photos").glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number in range(count):
        base, variant = originals[number % len(originals)], number // len(originals)
        with Image.open(base) as opened:
            image = opened.convert("RGB")
        if variant % 2:
            image = ImageOps.mirror(image)
        shrink = 0.06 * (variant // 2)
        if shrink:
            width, height = image.size
            dx, dy = round(width * shrink / 2), round(height * shrink / 2)
            image = image.crop((dx, dy, width - dx, height - dy))
        path = folder / f"{number:04d}-{base.stem}.jpg"
        image.save(path, quality=90)
        written.append(path)
    return written


def _open_images(paths: list[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        with Image.open(path) as opened:
            images.append(opened.convert("RGB"))
    return images


def _run_indexer(settings: Settings, folder: Path) -> tuple[Any, float, dict[str, float], int]:
    """Index `folder` with a fresh runtime whose models are loaded and warmed before the clock starts.

    Returns (runtime, seconds, the vectoriser's time per stage plus "cpu_setup_s" (CPU seconds spent
    before the clock started), files indexed).
    """
    from mmrag.ingest.pipeline import Indexer
    from mmrag.runtime import open_runtime

    setup_started = time.process_time()
    runtime = open_runtime(settings)
    warm = Image.new("RGB", (256, 256), (128, 96, 64))
    vectoriser = runtime.vectoriser()
    if runtime.clip is not None:
        runtime.clip.encode_images([warm] * settings.models.batch_size)  # a full batch, as the floor warms
        runtime.clip.encode_texts(["warm up"])
    if runtime.text is not None:
        runtime.text.encode_texts(["warm up"])
    if vectoriser.captioner is not None:
        vectoriser.captioner.caption([warm])
    if vectoriser.ocr is not None:
        vectoriser.ocr.read(warm)
    indexer = Indexer(settings, runtime.collection, vectoriser)

    def index_all() -> Any:
        with runtime.collection.writer():
            return indexer.run([folder])

    setup_cpu = time.process_time() - setup_started
    report, seconds = timed(index_all)
    if report.failed:
        raise RuntimeError(f"bench ingest failed on {[(f.path, f.reason) for f in report.failed][:3]}")
    return runtime, seconds, {**vectoriser.seconds, "cpu_setup_s": setup_cpu}, report.indexed


def bench_clip_images(work: Path, count: int, batch_size: int = 32, rounds: int = 3) -> dict[str, Any]:
    """CLIP road: pipeline images/s vs ClipEmbedder (preprocess + forward) vs bare open_clip forward.

    The three run in turn, `rounds` times (each pipeline round indexes the photos into a fresh data dir),
    so that a busy moment on a shared machine weighs on every layer alike; rates are the medians.
    """
    import open_clip
    import torch

    photos = write_photo_variants(work / "photos", count)
    model_id, checkpoint = random_clip_checkpoint()
    images = _open_images(photos)
    # The floor: open_clip alone, the same weights, inputs already preprocessed and batched.
    model, _, preprocess = open_clip.create_model_and_transforms(CLIP_ARCH, pretrained=str(checkpoint))
    model.eval()
    batches = [
        torch.stack([preprocess(im) for im in images[start : start + batch_size]])
        for start in range(0, len(images), batch_size)
    ]

    def forward_all() -> None:
        with torch.inference_mode():
            for batch in batches:
                model.encode_image(batch)

    forward_all()  # warm: the first batch of a shape pays for kernel choice
    seconds: dict[str, list[float]] = {"pipeline": [], "embedder": [], "bare_forward": []}
    # CPU seconds of the whole process (every thread): the work each layer costs, which other jobs on a
    # shared machine do not inflate the way they inflate wall time.
    cpu: dict[str, list[float]] = {"pipeline": [], "embedder": [], "bare_forward": []}
    stages: dict[str, float] = {}
    indexed = 0
    for number in range(rounds):
        settings = load_settings(
            None,
            data_dir=work / f"data-clip-{number}",
            models={"clip": model_id, "batch_size": batch_size, "device": "cpu"},
            spaces={"clip": True, "text": False},
            ingest={"road": "clip"},
            caption={"backend": "none", "ocr": False},
        )
        cpu_started = time.process_time()
        runtime, pipeline_s, stages, indexed = _run_indexer(settings, photos[0].parent)
        cpu["pipeline"].append(time.process_time() - cpu_started - stages.pop("cpu_setup_s", 0.0))
        cpu_started = time.process_time()
        _, embedder_s = timed(lambda: runtime.clip.encode_images(images))  # noqa: B023
        cpu["embedder"].append(time.process_time() - cpu_started)
        runtime.close()
        cpu_started = time.process_time()
        _, bare_s = timed(forward_all)
        cpu["bare_forward"].append(time.process_time() - cpu_started)
        for name, value in (("pipeline", pipeline_s), ("embedder", embedder_s), ("bare_forward", bare_s)):
            seconds[name].append(value)
        shutil.rmtree(work / f"data-clip-{number}", ignore_errors=True)
    result = _layers(
        "images",
        indexed,
        {name: float(np.median(values)) for name, values in seconds.items()},
        stages,
        {
            "model": f"open_clip {CLIP_ARCH} (random weights)",
            "batch_size": batch_size,
            "images": count,
            "rounds": rounds,
            "torch_threads": torch.get_num_threads(),
        },
    )
    result["round_seconds"] = seconds
    result["round_cpu_seconds"] = cpu
    result["pipeline_vs_bare_forward_cpu"] = float(
        np.median(cpu["bare_forward"]) / np.median(cpu["pipeline"])
    )
    result["round_pipeline_vs_bare_forward"] = [
        b / p for p, b in zip(seconds["pipeline"], seconds["bare_forward"], strict=True)
    ]
    return result


def bench_offline_images(work: Path, count: int) -> dict[str, Any]:
    """Offline profile: pipeline images/s vs EfficientNet-Lite0 + RapidOCR + MiniLM called bare."""
    import torch

    from mmrag.caption.efficientnet import EfficientNetLabeler, preprocess

    photos = write_photo_variants(work / "photos", count)
    settings = load_settings(OFFLINE_CONFIG, data_dir=work / "data-offline", models={"device": "cpu"})
    runtime, pipeline_s, stages, indexed = _run_indexer(settings, photos[0].parent)
    stages.pop("cpu_setup_s")
    vectoriser = runtime.vectoriser()
    labeler, ocr, text = vectoriser.captioner, vectoriser.ocr, runtime.text
    if not isinstance(labeler, EfficientNetLabeler) or ocr is None or text is None:
        raise RuntimeError(f"{OFFLINE_CONFIG} no longer configures EfficientNet labels, OCR and a text space")
    images = _open_images(photos)

    # The floor: each model on its own input, prepared outside the clock.
    labeler.load()
    model = labeler._model  # the same loaded network; calling it here skips only mmrag's wrapping
    batches = [
        torch.from_numpy(np.stack([preprocess(im) for im in images[start : start + 16]]))
        for start in range(0, len(images), 16)
    ]
    captions = [result.text or "" for result in labeler.caption(images)]
    arrays = [np.ascontiguousarray(np.asarray(im)[..., ::-1]) for im in images]
    ocr.load()
    engine = ocr._engine

    def labels() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch)

    def read_all() -> None:
        for array in arrays:
            engine(array)

    _, label_s = timed(labels)
    _, ocr_s = timed(read_all)
    _, embed_s = timed(lambda: text.encode_texts(captions))
    runtime.close()
    result = _layers(
        "images",
        indexed,
        {"pipeline": pipeline_s, "bare_forward": label_s + ocr_s + embed_s},
        stages,
        {
            "model": "EfficientNet-Lite0 labels + RapidOCR -> all-MiniLM-L6-v2 (configs/offline.yaml)",
            "images": count,
        },
    )
    result["bare_forward_parts_s"] = {"efficientnet": label_s, "rapidocr": ocr_s, "minilm": embed_s}
    return result


def bench_pdf(work: Path, pdf: Path, pages: tuple[int, int] | None) -> dict[str, Any]:
    """PDF pages/s: pipeline (offline profile, MiniLM) vs extract_pdf vs bare PyMuPDF text extraction.

    The PDF (or its page range) is written by the sections evaluation builder, so its outline's qrels
    come along; `bench.run` scores them on the collection this step builds.
    """
    import pymupdf

    from mmrag.evaluation.datasets import build_pdf_sections_set
    from mmrag.ingest.pdf import extract_pdf

    folder = work / "pdf-set"
    shutil.rmtree(folder, ignore_errors=True)
    qrels = build_pdf_sections_set(folder, pdf=pdf, n_queries=100, pages=pages)
    copy = next((folder / "pdfs").glob("*.pdf"))
    settings = load_settings(OFFLINE_CONFIG, data_dir=work / "data-pdf", models={"device": "cpu"})

    def bare_pymupdf() -> int:
        with pymupdf.open(copy) as doc:
            for page in doc:
                page.get_text("blocks")
            return doc.page_count

    page_count, bare_s = timed(bare_pymupdf)
    chunks, extract_s = timed(lambda: [item.text for item in extract_pdf(copy, settings.ingest)])
    runtime, pipeline_s, stages, _ = _run_indexer(settings, folder / "pdfs")
    stages.pop("cpu_setup_s")
    # The embedding floor is timed on a sample of the chunks: encoding all of them again would double the
    # step's time for the same per-chunk rate.
    texts = [c for c in chunks if c]
    sample = texts[:: max(1, len(texts) // _EMBED_SAMPLE)][:_EMBED_SAMPLE]
    _, sample_s = timed(lambda: runtime.text.encode_texts(sample))
    embed_s = sample_s * len(texts) / max(1, len(sample))
    sections = _score_sections(runtime, qrels)
    runtime.close()
    result = _layers(
        "pages",
        page_count,
        {"pipeline": pipeline_s, "extract_pdf": extract_s, "bare_pymupdf": bare_s, "embed_only": embed_s},
        stages,
        {"pdf": str(pdf), "pages": page_count, "chunks": len(chunks), "model": "all-MiniLM-L6-v2"},
    )
    result["chunks_per_s_embed_only"] = len(sample) / sample_s if sample_s else None
    result["sections_eval"] = sections
    return result


def _score_sections(runtime: Any, qrels: Path) -> dict[str, Any]:
    """Recall@1/5/10, MRR, nDCG@10 and latency of the outline's title -> page queries on this collection."""
    from mmrag.evaluation.qrels import load_qrels
    from mmrag.evaluation.runner import retriever_search_fn, run_eval

    queries = load_qrels(qrels)
    report = run_eval(queries, retriever_search_fn(runtime.retriever(), queries)).to_dict()
    fused = report["rankings"]["fused"]
    fused.pop("per_query")
    return {"qrels": str(qrels), **fused}


def _layers(
    unit: str, count: int, seconds: dict[str, float], stages: dict[str, float], about: dict[str, Any]
) -> dict[str, Any]:
    """Per layer: seconds and `unit`/s; ratios of the pipeline to every other layer."""
    rates = {name: count / s if s > 0 else float("inf") for name, s in seconds.items()}
    return {
        **about,
        "unit": unit,
        "count": count,
        "seconds": seconds,
        f"{unit}_per_s": rates,
        "pipeline_vs": {name: rates["pipeline"] / rate for name, rate in rates.items() if name != "pipeline"},
        "pipeline_stage_seconds": stages,
    }
