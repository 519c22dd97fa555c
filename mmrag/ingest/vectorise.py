"""Turn extracted items into vectors, per road: images through CLIP's image tower and/or described in words
(caption + OCR, cached by image hash) and embedded in the text space; text chunks into every active space."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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


@dataclass
class PendingItem:
    extracted: ExtractedItem
    thumbnail: str | None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    done: bool = False  # vectorised (it may still have no vector: a caption-only image nobody could describe)


class Vectoriser:
    def __init__(
        self,
        db: Database,
        road: str,
        clip: ImageEncoder | None = None,
        text: TextEncoder | None = None,
        captioner: Captioner | None = None,
        ocr: OcrEngine | None = None,
        caption_batch: int = 8,
    ) -> None:
        self.db = db
        self.clip_images = clip is not None and road in ("clip", "both")
        self.describe_images = (
            text is not None and road in ("caption", "both") and (captioner or ocr) is not None
        )
        self.clip, self.text, self.captioner, self.ocr = clip, text, captioner, ocr
        self.caption_batch = caption_batch
        self.seconds: dict[str, float] = defaultdict(float)  # time per stage, for the run summary

    def run(self, items: Sequence[PendingItem]) -> None:
        waiting = [it for it in items if not it.done]
        images = [it for it in waiting if it.extracted.image is not None]
        chunks = [it for it in waiting if it.extracted.image is None and it.extracted.text]
        if self.describe_images and images:
            self._describe(images)
        if self.clip is not None:
            if self.clip_images and images:
                vecs = self._timed(
                    "embed_clip", self.clip.encode_images, [it.extracted.image for it in images]
                )
                self._assign(images, self.clip.space, vecs)
            clip_chunks = [it for it in chunks if _embedded_in(it, self.clip.space)]
            if clip_chunks:
                texts = [it.extracted.text for it in clip_chunks]
                self._assign(
                    clip_chunks, self.clip.space, self._timed("embed_clip", self.clip.encode_texts, texts)
                )
        if self.text is not None:
            described = [it for it in images if it.extracted.meta.get("description")]
            targets = [it for it in chunks if _embedded_in(it, self.text.space)] + described
            if targets:
                texts = [it.extracted.meta.get("description") or it.extracted.text for it in targets]
                self._assign(
                    targets, self.text.space, self._timed("embed_text", self.text.encode_texts, texts)
                )
        for it in waiting:
            it.done = True
            it.extracted.image = None  # pixels are no longer needed; free them before the commit

    def _describe(self, images: list[PendingItem]) -> None:
        captions = self._cached_run(self.captioner, "caption", images) if self.captioner else {}
        ocr_texts = self._cached_run(self.ocr, "ocr", images) if self.ocr else {}
        for it in images:
            meta = it.extracted.meta
            h = it.extracted.content_hash
            caption, ocr_text = captions.get(h), ocr_texts.get(h)
            if caption is not None and caption.text:
                meta["caption"] = caption.text
            elif caption is not None:
                meta["caption_error"] = caption.error
            if ocr_text is not None and ocr_text.text:
                meta["ocr_text"] = ocr_text.text
            parts = [p for p in (meta.get("caption"), meta.get("ocr_text")) if p]
            if parts:
                meta["description"] = "\n".join(parts)
                if it.extracted.modality is Modality.IMAGE and not it.extracted.text:
                    it.extracted.text = meta["description"]

    def _cached_run(
        self, engine: Captioner | OcrEngine, stage: str, images: list[PendingItem]
    ) -> dict[str, CaptionResult]:
        """Describe each distinct image once, reusing what the database already holds for this engine."""
        engine_id = engine.captioner_id if stage == "caption" else engine.ocr_id  # type: ignore[union-attr]
        by_hash: dict[str, Image.Image] = {}
        for it in images:
            assert it.extracted.image is not None
            by_hash.setdefault(it.extracted.content_hash, fit_for_model(it.extracted.image))
        results = {h: CaptionResult(text=t) for h, t in cached_captions(self.db, by_hash, engine_id).items()}
        todo = [h for h in by_hash if h not in results]
        for start in range(0, len(todo), self.caption_batch):
            batch = todo[start : start + self.caption_batch]
            fresh = self._timed(stage, self._engine_call(engine, stage), [by_hash[h] for h in batch])
            for h, res in zip(batch, fresh, strict=True):
                results[h] = res
                if res.error:
                    log.warning("%s failed for an image (%s): %s", engine_id, h[:12], res.error)
            store_captions(self.db, engine_id, [(h, results[h].text, results[h].error) for h in batch])
        return results

    @staticmethod
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

    def _timed(self, stage: str, fn: Callable, *args: object) -> object:  # type: ignore[type-arg]
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - start

    @staticmethod
    def _assign(items: Sequence[PendingItem], space: str, vectors: np.ndarray) -> None:
        for it, vec in zip(items, vectors, strict=True):
            it.vectors[space] = vec


def _embedded_in(item: PendingItem, space: str) -> bool:
    """A text chunk goes into every active space, unless its chunking names its own (ingest.text.Chunking)."""
    spaces = item.extracted.meta.get(SPACES_KEY)
    return spaces is None or space in spaces
