"""Captions from a vision-language model running in-process through transformers."""

from __future__ import annotations

import hashlib
import logging

from PIL import Image

from mmrag.caption.base import CAPTION_PROMPT, CaptionResult
from mmrag.caption.openai_captioner import clean_caption
from mmrag.errors import ConfigError
from mmrag.vlm.transformers_vlm import TransformersVLM

logger = logging.getLogger(__name__)

_ERROR_CHARS = 300


class TransformersCaptioner:
    """Meets mmrag.caption.base.Captioner: `batch_size` images per generate call, greedy decoding.

    A batch that fails is retried one image at a time, so an image the processor rejects (a 2 px sliver, a
    truncated file) gets its own error and the others still get captions. Only a model that cannot load
    (ConfigError) fails the whole call.
    """

    def __init__(self, vlm: TransformersVLM, prompt: str = CAPTION_PROMPT, batch_size: int = 4) -> None:
        if not prompt.strip():
            raise ConfigError("caption prompt is empty")
        if batch_size < 1:
            raise ConfigError(f"caption batch_size must be at least 1, got {batch_size}")
        self.vlm = vlm
        self.prompt = prompt
        self.batch_size = batch_size
        prompt_hash = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        # A new prompt must give a new id, so cached captions made with the old prompt are redone.
        self.captioner_id = f"transformers:{vlm.model_id}#{prompt_hash}"

    def caption(self, images: list[Image.Image]) -> list[CaptionResult]:
        results: list[CaptionResult] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._caption_batch(images[start : start + self.batch_size]))
        failed = [result.error for result in results if result.error]
        if failed:
            logger.warning("%d of %d captions failed; first error: %s", len(failed), len(results), failed[0])
        return results

    def conversation(self, image: Image.Image) -> list[dict]:
        """The chat sent for one image: the image, then the instruction (the order VLMs are tuned on)."""
        return [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": self.prompt}],
            }
        ]

    def _caption_batch(self, batch: list[Image.Image]) -> list[CaptionResult]:
        try:
            replies = self.vlm.generate([self.conversation(image) for image in batch])
        except ConfigError:
            raise
        except (
            Exception
        ) as exc:  # one image's failure (bad pixels, OOM on a big batch) must not fail the rest
            if len(batch) == 1:
                return [CaptionResult(error=_describe(exc))]
            logger.info(
                "caption batch of %d failed (%s); retrying one image at a time", len(batch), _describe(exc)
            )
            return [result for image in batch for result in self._caption_batch([image])]
        return [_to_result(reply) for reply in replies]


def _to_result(reply: str) -> CaptionResult:
    text = clean_caption(reply)
    return CaptionResult(text=text) if text else CaptionResult(error="empty caption")


def _describe(exc: Exception) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= _ERROR_CHARS else message[:_ERROR_CHARS] + "..."
