"""The CLIP space: images through the image tower, text through the text tower, one shared space."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmrag.embed.clip_images import ImageBatcher
from mmrag.embed.clip_text import TextTower, encode_trimmed, text_tower, trimmed_matches_padded
from mmrag.embed.query_cache import QueryCache
from mmrag.registry import (
    canonical_clip_id,
    create_clip,
    parse_clip_id,
    register_model_configs,
    resolve_device,
    resolve_precision,
)
from mmrag.settings import ModelSettings
from mmrag.threads import usable_cores

log = logging.getLogger(__name__)

# How close (per coordinate of the normalised vector) the shortened text run must come to the padded one.
_TRIM_TOLERANCE = {"fp32": 1e-4}
_TRIM_TOLERANCE_HALF = 5e-3  # fp16 / bf16: the two runs round differently


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def preprocess_workers(setting: int, device: str) -> int:
    """Threads that prepare images: the setting, or for 0 (auto) half the cores up to 4 on the CPU (the
    model needs the rest; preparing costs ~2% of its forward there), and up to 8 for a GPU, which only
    waits for them."""
    if setting:
        return setting
    cores = usable_cores()
    return max(1, min(8, cores)) if device != "cpu" else max(1, min(4, cores // 2))


class ClipEmbedder:
    """Lazily loaded open_clip model. Batched, no_grad, L2-normalised float32 outputs.

    Images are prepared on worker threads a batch ahead of the forward pass (on the GPU when the model is
    there); texts run on their real tokens when the text tower allows it (checked against the padded run at
    load); single-text calls (queries) go through a small LRU cache.
    """

    space = "clip"

    def __init__(self, settings: ModelSettings, *, trim_text: bool = True) -> None:
        self._settings = settings
        # The id alone (no open_clip import): a command that embeds nothing never loads the library.
        self.model_id = canonical_clip_id(settings.clip)
        self.batch_size = settings.batch_size
        self.query_cache = QueryCache(settings.query_cache_size)
        self._want_trim = trim_text
        self._lock = threading.Lock()
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._images: ImageBatcher | None = None
        self._tower: TextTower | None = None  # set when the shortened text run matched the padded one
        self.text_trim_note = "not loaded"
        self._dim = 0
        self.device = "cpu"
        self.precision = "fp32"

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            register_model_configs(self._settings.model_config_paths)
            self.spec = parse_clip_id(self._settings.clip)
            device = resolve_device(self._settings.device)
            precision = resolve_precision(self._settings.precision, device)
            model, preprocess, tokenizer = create_clip(self.spec, device, precision, self._settings.cache_dir)
            import torch

            with torch.inference_mode():  # the architecture's output width, whatever its config calls it
                probe = model.encode_text(tokenizer(["a"]).to(device))
            self._dim = int(probe.shape[-1])
            self._images = ImageBatcher(
                preprocess,
                device,
                next(model.parameters()).dtype,
                preprocess_workers(self._settings.preprocess_workers, device),
            )
            self._tower, self.text_trim_note = self._check_trim(model, tokenizer, device, precision)
            self.device, self.precision = device, precision
            self._preprocess, self._tokenizer = preprocess, tokenizer
            self._model = model  # last: other threads see a loaded model only once all of it is ready

    def _check_trim(
        self, model: Any, tokenizer: Any, device: str, precision: str
    ) -> tuple[TextTower | None, str]:
        if not self._want_trim:
            return None, "off (padded run requested)"
        tolerance = _TRIM_TOLERANCE.get(precision, _TRIM_TOLERANCE_HALF)
        matches, why = trimmed_matches_padded(model, tokenizer, device, tolerance)
        if not matches:
            log.info("%s: text runs padded to the full context (%s)", self.model_id, why)
            return None, f"padded: {why}"
        return text_tower(model), "real tokens (matches the padded run)"

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

    @property
    def trims_text(self) -> bool:
        """Whether texts run on their real tokens (False: padded to the context, as open_clip runs them)."""
        self.load()
        return self._tower is not None

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        self.load()
        assert self._images is not None
        out: list[np.ndarray] = []
        for batch in self._images.batches(images, self.batch_size):
            with torch.inference_mode():
                feats = self._model.encode_image(batch)
            out.append(feats.float().cpu().numpy())
        return self._finish(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.load()
        if len(texts) == 1:  # a query: repeated ones skip the tower
            cached = self.query_cache.get(texts[0])
            if cached is not None:
                return cached[np.newaxis, :]
            vector = self._encode_texts(texts)
            self.query_cache.put(texts[0], vector[0])
            return vector
        return self._encode_texts(texts)

    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.batch_size])).to(
                self.device
            )  # truncates
            with torch.inference_mode():
                if self._tower is not None:
                    feats = encode_trimmed(self._tower, tokens)
                else:
                    feats = self._model.encode_text(tokens)
            out.append(feats.float().cpu().numpy())
        return self._finish(out)

    def _finish(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return l2_normalise(np.concatenate(parts))
