"""What an embedding space needs from its model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image


@runtime_checkable
class TextEncoder(Protocol):
    space: str  # "clip" or "text": the name of the index this model's vectors go to
    model_id: str

    @property
    def dim(self) -> int: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim), L2-normalised."""
        ...


@runtime_checkable
class ImageEncoder(TextEncoder, Protocol):
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...
