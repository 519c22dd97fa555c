"""What extraction yields: one item per image, text chunk or rendered page, with where it came from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image


class FileKind(str, Enum):
    IMAGE = "image"
    PDF = "pdf"
    TEXT = "text"


class Modality(str, Enum):
    TEXT = "text"  # a chunk of text from a text file or a PDF page
    IMAGE = "image"  # a photo file or an image embedded in a PDF
    PAGE = "page"  # a rendered PDF page (for scans and figure-heavy pages)


BBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in PDF points (images: pixels)


@dataclass
class ExtractedItem:
    modality: Modality
    content_hash: str  # sha256 of the pixels' source bytes or of the text
    page: int | None = None  # 1-based page number in a PDF
    bbox: BBox | None = None
    text: str | None = None
    image: Image.Image | None = None  # RGB, orientation applied
    meta: dict[str, Any] = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
