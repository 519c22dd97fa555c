"""Turn extracted items into vectors, per road: images through CLIP's image tower and/or described in words
(caption + OCR, cached by image hash) and embedded in the text space; text chunks into every active space.

The model steps (`describe`, `compose_descriptions`, `embed_clip`, `embed_text`) are pure: items in,
vectors and descriptions out, no database. The caption cache is looked up before them and the new captions
stored after them, by whoever holds the database: the Vectoriser for the local runner, the driver for the
Ray runner, whose model actors call the same steps (mmrag.ingest.runners.ray).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from mmrag.caption.base import Captioner, CaptionResult, OcrEngine
from mmrag.embed.base import ImageEncoder, TextEncoder
from mmrag.ingest.images import fit_for_model
from mmrag.ingest.items import ExtractedItem, Modality
from mmrag.ingest.text import SPACES_KEY
from mmrag.store.captions import cached_captions, store_captions
from mmrag.store.db import Database

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

Described = tuple[str, str | None, str | None]  # (image hash, text or None, error or None): a fresh result
StageTimer = Callable[[str, float], None]


@dataclass
class PendingItem:
    extracted: ExtractedItem
    thumbnail: str | None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    done: bool = False  # vectorised (it may still have no vector: a caption-only image nobody could describe)


class CaptionCache(Protocol):
    """(engine id, image hash) -> text: what a captioner or OCR engine already made of an image."""

    def lookup(self, engine_id: str, image_hashes: Iterable[str]) -> dict[str, str]: ...
    def store(self, engine_id: str, results: Sequence[Described]) -> None: ...


class DatabaseCaptionCache:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, engine_id: str, image_hashes: Iterable[str]) -> dict[str, str]:
        return cached_captions(self.db, image_hashes, engine_id)

    def store(self, engine_id: str, results: Sequence[Described]) -> None:
        if results:
            store_captions(self.db, engine_id, results)


def engine_id(engine: Captioner | OcrEngine, stage: str) -> str:
    return engine.captioner_id if stage == "caption" else engine.ocr_id  # type: ignore[union-attr]


class Vectoriser:
    def __init__(
        self,
        db: Database | None,
        road: str,
        clip: ImageEncoder | None = None,
        text: TextEncoder | None = None,
        captioner: Captioner | None = None,
        ocr: OcrEngine | None = None,
        caption_batch: int = 8,
        cache: CaptionCache | None = None,
    ) -> None:
        self.cache = cache or (DatabaseCaptionCache(db) if db is not None else None)
        self.clip_images = clip is not None and road in ("clip", "both")
        self.describe_images = (
            text is not None and road in ("caption", "both") and (captioner or ocr) is not None
        )
        self.clip, self.text, self.captioner, self.ocr = clip, text, captioner, ocr
        self.caption_batch = caption_batch
        self.seconds: dict[str, float] = defaultdict(float)  # time per stage, for the run summary

    def _timer(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def run(self, items: Sequence[PendingItem]) -> None:
        waiting = [it for it in items if not it.done]
        images = [it for it in waiting if it.extracted.image is not None]
        chunks = [it for it in waiting if it.extracted.image is None and it.extracted.text]
        if self.describe_images and images:
            for engine, stage in ((self.captioner, "caption"), (self.ocr, "ocr")):
                if engine is None:
                    continue
                name = engine_id(engine, stage)
                known = (
                    self.cache.lookup(name, {it.extracted.content_hash for it in images})
                    if self.cache
                    else {}
                )
                fresh = describe(engine, stage, images, known, self.caption_batch, self._timer)
                if self.cache is not None:
                    self.cache.store(name, fresh)
            compose_descriptions(images)
        if self.clip is not None:
            embed_clip(self.clip, images if self.clip_images else [], chunks, self._timer)
        if self.text is not None:
            embed_text(self.text, images, chunks, self._timer)
        for it in waiting:
            it.done = True
            it.extracted.image = None  # pixels are no longer needed; free them before the commit


# ---- the pure steps: models only --------------------------------------------------------------------------


def describe(
    engine: Captioner | OcrEngine,
    stage: str,
    images: Sequence[PendingItem],
    known: Mapping[str, str],
    batch_size: int,
    timer: StageTimer | None = None,
) -> list[Described]:
    """Caption (stage "caption") or read (stage "ocr") each distinct image once, except those in `known`
    (hash -> text from the cache); writes the result into each item's meta. Returns the fresh results, for
    the cache."""
    by_hash: dict[str, Image.Image] = {}
    for it in images:
        assert it.extracted.image is not None
        by_hash.setdefault(it.extracted.content_hash, fit_for_model(it.extracted.image))
    results = {h: CaptionResult(text=known[h]) for h in by_hash if h in known}
    todo = [h for h in by_hash if h not in results]
    call = _engine_call(engine, stage)
    fresh: list[Described] = []
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        began = time.perf_counter()
        try:
            outcomes = call([by_hash[h] for h in batch])
        finally:
            if timer is not None:
                timer(stage, time.perf_counter() - began)
        for h, res in zip(batch, outcomes, strict=True):
            results[h] = res
            fresh.append((h, res.text, res.error))
            if res.error:
                log.warning("%s failed for an image (%s): %s", engine_id(engine, stage), h[:12], res.error)
    for it in images:
        meta = it.extracted.meta
        result = results.get(it.extracted.content_hash)
        if result is None:
            continue
        if stage == "caption":
            if result.text:
                meta["caption"] = result.text
            else:
                meta["caption_error"] = result.error
        elif result.text:
            meta["ocr_text"] = result.text
    return fresh


def compose_descriptions(images: Iterable[PendingItem]) -> None:
    """An image's description (what the text space embeds) is its caption and its OCR text."""
    for it in images:
        meta = it.extracted.meta
        parts = [p for p in (meta.get("caption"), meta.get("ocr_text")) if p]
        if parts:
            meta["description"] = "\n".join(parts)
            if it.extracted.modality is Modality.IMAGE and not it.extracted.text:
                it.extracted.text = meta["description"]


def embed_clip(
    clip: ImageEncoder,
    images: Sequence[PendingItem],
    chunks: Sequence[PendingItem],
    timer: StageTimer | None = None,
) -> None:
    """Images through CLIP's image tower, text chunks (those cut for it) through its text tower, into the
    CLIP space."""
    if images:
        _assign(
            images,
            clip.space,
            _timed(timer, "embed_clip", clip.encode_images, [it.extracted.image for it in images]),
        )
    chunks = [it for it in chunks if _embedded_in(it, clip.space)]
    if chunks:
        _assign(
            chunks,
            clip.space,
            _timed(timer, "embed_clip", clip.encode_texts, [it.extracted.text for it in chunks]),
        )


def embed_text(
    text: TextEncoder,
    images: Sequence[PendingItem],
    chunks: Sequence[PendingItem],
    timer: StageTimer | None = None,
) -> None:
    """Text chunks (those cut for it), and the images that have a description, into the text space."""
    targets = [it for it in chunks if _embedded_in(it, text.space)]
    targets += [it for it in images if it.extracted.meta.get("description")]
    if targets:
        texts = [it.extracted.meta.get("description") or it.extracted.text for it in targets]
        _assign(targets, text.space, _timed(timer, "embed_text", text.encode_texts, texts))


def _engine_call(
    engine: Captioner | OcrEngine, stage: str
) -> Callable[[list[Image.Image]], list[CaptionResult]]:
    if stage == "caption":
        return engine.caption  # type: ignore[union-attr]
    from mmrag.caption.ocr import ocr_text

    def read_all(images: list[Image.Image]) -> list[CaptionResult]:
        out = []
        for image in images:
            try:
                out.append(CaptionResult(text=ocr_text(engine.read(image))))  # type: ignore[union-attr]
            except Exception as exc:  # one unreadable image must not stop the others
                out.append(CaptionResult(error=f"{type(exc).__name__}: {exc}"))
        return out

    return read_all


def _timed(timer: StageTimer | None, stage: str, fn: Callable[..., Any], *args: object) -> Any:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        if timer is not None:
            timer(stage, time.perf_counter() - start)


def _assign(items: Sequence[PendingItem], space: str, vectors: np.ndarray) -> None:
    for it, vec in zip(items, vectors, strict=True):
        it.vectors[space] = vec


def _embedded_in(item: PendingItem, space: str) -> bool:
    """A text chunk goes into every active space, unless its chunking names its own (ingest.text.Chunking)."""
    spaces = item.extracted.meta.get(SPACES_KEY)
    return spaces is None or space in spaces
