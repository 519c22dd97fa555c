"""An optional reranking stage after fusion: a cross-encoder reads the query with each of the top-N hits.

A cross-encoder scores (query, passage) pairs jointly, which ranks better than comparing two independently
made embeddings, at the cost of one forward pass per hit; so it only reorders the first `top_n` fused hits.
It reads text: a text chunk's words, a page's text, an image's caption and OCR text (the caption road). A hit
with no text (an image on the CLIP road only) cannot be scored and keeps its place; the scored hits are
reordered among the remaining places. A query with no text (an image query) is left as fused.

Off by default (`retrieve.rerank: null`): no cross-encoder weights install from PyPI. Any
sentence-transformers CrossEncoder loads by hub id (e.g. cross-encoder/ms-marco-MiniLM-L6-v2) or directory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrag.embed.text import _hub_offline
from mmrag.errors import ConfigError
from mmrag.registry import resolve_device
from mmrag.settings import RetrieveSettings

if TYPE_CHECKING:  # search.py imports this module to rerank its hits; no import back at run time
    from mmrag.retrieve.search import Hit

log = logging.getLogger(__name__)

RERANK_LIST = "rerank"  # the key of the reranker's rank and score in Hit.ranks and Hit.scores
MAX_PASSAGE_CHARS = 4000  # the model truncates to its own token limit; this only bounds the tokenizer's work


class Reranker:
    """A sentence-transformers CrossEncoder, loaded on first use."""

    def __init__(
        self,
        model_id: str,
        device: str = "auto",
        batch_size: int = 32,
        cache_dir: Path | None = None,
    ) -> None:
        if not model_id.strip():
            raise ConfigError("the reranker needs a model id or directory (retrieve.rerank)")
        if batch_size < 1:
            raise ConfigError(f"reranker batch_size must be >= 1, got {batch_size}")
        self.model_id = model_id
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._requested_device = device
        self._lock = threading.Lock()
        self._model: Any = None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            local = Path(self.model_id).expanduser()
            source = str(local) if local.is_dir() else self.model_id
            device = resolve_device(self._requested_device)
            try:
                from sentence_transformers import CrossEncoder
            except ImportError as exc:
                raise ConfigError("reranking needs sentence-transformers: pip install 'mmrag[text]'") from exc
            try:
                model = CrossEncoder(
                    source,
                    device=device,
                    cache_folder=str(self.cache_dir) if self.cache_dir else None,
                    local_files_only=_hub_offline(),
                )
            except Exception as exc:  # hub, file-system and format errors all mean "this id cannot load"
                raise ConfigError(
                    f"cannot load reranker {self.model_id!r} (retrieve.rerank): {type(exc).__name__}: {exc}"
                ) from exc
            if model.num_labels != 1:
                raise ConfigError(
                    f"reranker {self.model_id!r} has {model.num_labels} output labels; a reranker gives one "
                    "relevance score per (query, passage) pair"
                )
            model.eval()
            self._model = model
            log.info("loaded reranker %s on %s", self.model_id, device)

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score per passage, higher is more relevant (float32, shape (n,))."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        self.load()
        import torch

        pairs = [(query, passage[:MAX_PASSAGE_CHARS]) for passage in passages]
        with torch.inference_mode():
            scores = self._model.predict(
                pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
            )
        return np.asarray(scores, dtype=np.float32).reshape(len(passages))

    def rerank(self, query: str | None, hits: Sequence[Hit], top_n: int) -> list[Hit]:
        """`hits` with the first `top_n` reordered by the cross-encoder; see rerank_hits."""
        return rerank_hits(self, query, hits, top_n)


def rerank_hits(reranker: Reranker | None, query: str | None, hits: Sequence[Hit], top_n: int) -> list[Hit]:
    """The fused `hits`, the first `top_n` of them reordered by `reranker`'s scores, the rest as they were.

    Reordered hits are copies with ranks["rerank"] (1-based among the scored hits) and scores["rerank"] (the
    model's score); `score` stays the fused score. Hits without text keep their places. With no reranker or no
    query text, the hits come back unchanged.
    """
    if top_n < 1:
        raise ValueError(f"rerank top_n must be at least 1, got {top_n}")
    hits = list(hits)
    if reranker is None or not (query and query.strip()):
        return hits
    head, tail = hits[:top_n], hits[top_n:]
    scored = [i for i, hit in enumerate(head) if hit.text and hit.text.strip()]
    if not scored:
        return hits
    scores = reranker.score(query, [head[i].text or "" for i in scored])
    order = sorted(range(len(scored)), key=lambda j: (-float(scores[j]), j))  # ties keep the fused order
    reordered = list(head)
    for rank, (slot, j) in enumerate(zip(scored, order, strict=True), start=1):
        hit = head[scored[j]]
        reordered[slot] = replace(
            hit,
            ranks={**hit.ranks, RERANK_LIST: rank},
            scores={**hit.scores, RERANK_LIST: float(scores[j])},
        )
    return reordered + tail


def reranker_from_settings(
    settings: RetrieveSettings, device: str = "auto", cache_dir: Path | None = None
) -> Reranker | None:
    """The reranker `retrieve.rerank` names, not yet loaded; None when reranking is off."""
    if settings.rerank is None:
        return None
    return Reranker(settings.rerank, device=device, cache_dir=cache_dir)
