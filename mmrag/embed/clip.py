"""The CLIP space: images through the image tower, text through the text tower, one shared space."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmrag.registry import (
    canonical_clip_id,
    create_clip,
    parse_clip_id,
    register_model_configs,
    resolve_device,
    resolve_precision,
)
from mmrag.settings import ModelSettings


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class ClipEmbedder:
    """Lazily loaded open_clip model. Batched, no_grad, L2-normalised float32 outputs."""

    space = "clip"

    def __init__(self, settings: ModelSettings) -> None:
        self._settings = settings
        # The id alone (no open_clip import): a command that embeds nothing never loads the library.
        self.model_id = canonical_clip_id(settings.clip)
        self.batch_size = settings.batch_size
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dim = 0
        self.device = "cpu"

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            register_model_configs(self._settings.model_config_paths)
            self.spec = parse_clip_id(self._settings.clip)
            self.device = resolve_device(self._settings.device)
            precision = resolve_precision(self._settings.precision, self.device)
            self._model, self._preprocess, self._tokenizer = create_clip(
                self.spec, self.device, precision, self._settings.cache_dir
            )
            import torch

            with torch.inference_mode():  # the architecture's output width, whatever its config calls it
                probe = self._model.encode_text(self._tokenizer(["a"]).to(self.device))
            self._dim = int(probe.shape[-1])

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def context_length(self) -> int:
        self.load()
        return int(getattr(self._tokenizer, "context_length", 77))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        self.load()
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self._preprocess(im) for im in images[start : start + self.batch_size]])
            with torch.inference_mode():
                feats = self._model.encode_image(batch.to(self.device, dtype=self._input_dtype()))
            out.append(feats.float().cpu().numpy())
        return self._finish(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.batch_size]))  # truncates to context
            with torch.inference_mode():
                feats = self._model.encode_text(tokens.to(self.device))
            out.append(feats.float().cpu().numpy())
        return self._finish(out)

    def _input_dtype(self) -> Any:
        return next(self._model.parameters()).dtype

    def _finish(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return l2_normalise(np.concatenate(parts))
