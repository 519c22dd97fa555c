"""The interface every captioner (VLM, OpenAI-compatible server, offline classifier) and OCR engine meets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image


# Asks for what a searcher would type, not for a poem: objects, people, text, setting, style.
CAPTION_PROMPT = (
    "Describe this image for a search index in one or two sentences. Name the main objects, people, "
    "animals, any visible text, the setting and the kind of image (photo, chart, diagram, scan, screenshot). "
    "Do not speculate."
)


@dataclass(frozen=True)
class CaptionResult:
    """A caption, or the reason there is none. One image's failure never fails the batch."""

    text: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None and self.error is None


@runtime_checkable
class Captioner(Protocol):
    # Stable id of model + prompt; captions are cached in the database under (image hash, captioner_id).
    captioner_id: str

    def caption(self, images: list[Image.Image]) -> list[CaptionResult]:
        """One result per image, in order. Raises only for failures that concern every image (bad config)."""
        ...


@dataclass(frozen=True)
class OcrLine:
    text: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float


@runtime_checkable
class OcrEngine(Protocol):
    ocr_id: str

    def read(self, image: Image.Image) -> list[OcrLine]: ...
