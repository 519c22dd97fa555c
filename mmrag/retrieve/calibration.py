"""Make raw cosine scores from different spaces and modalities comparable.

In CLIP's space a text query scores images far lower than it scores text (the modality gap), and a
MiniLM text->text score has another scale again. For each (query list, item modality) we fit the
background distribution of scores on the collection itself: sample queries (generic "a photo of ..."
prompts and snippets of the collection's own text; for image queries, the collection's own images)
against a sample of the items, and keep its mean and standard deviation. A hit's calibrated score is its
z-score against that background: how far above a typical, unrelated item it stands.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmrag.collection import Collection
from mmrag.embed.base import TextEncoder
from mmrag.store import items

log = logging.getLogger(__name__)

SAMPLE_ITEMS = 2000
SAMPLE_QUERIES = 64
REFIT_GROWTH = 0.2  # refit once a space has grown or shrunk by this fraction
CALIBRATION_VERSION = 3  # 3: lexical lists
LEXICAL_BACKGROUND_DEPTH = 1000  # hits per sample query; every other item scores 0 (it shares no word)


@dataclass
class Calibration:
    # "clip:text>image" -> (mean, std): text queries in the CLIP space against its image items
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # items per space when fitted

    def z(self, list_name: str, modality: str, score: float) -> float:
        mean, std = self.stats.get(list_name, (0.0, 1.0))
        return (score - mean) / std

    def stale(self, counts: dict[str, int]) -> bool:
        for space, n in counts.items():
            old = self.counts.get(space)
            if old is None or abs(n - old) > REFIT_GROWTH * max(old, 1):
                return True
        return False


def _query_texts(collection: Collection, rng: random.Random) -> list[str]:
    """Generic prompts ("a photo of a tench"), then snippets of the collection's own text."""
    from mmrag.caption.efficientnet import imagenet_labels

    labels = list(imagenet_labels())
    prompts = [f"a photo of a {label}" for label in rng.sample(labels, SAMPLE_QUERIES // 2)]
    texts = items.sample_texts(collection.db, collection.name)
    snippets = [
        " ".join(t.split()[:12]) for t in rng.sample(list(texts), min(len(texts), SAMPLE_QUERIES // 2))
    ]
    return prompts + [s for s in snippets if s]


def _sample_vectors(
    collection: Collection, space: str, dim: int, rng: random.Random
) -> dict[str, np.ndarray]:
    """Up to SAMPLE_ITEMS stored vectors per modality in one space."""
    return items.sample_vectors(collection.db, collection.name, space, dim, SAMPLE_ITEMS, rng)


def _background(queries: np.ndarray, items: np.ndarray) -> tuple[float, float] | None:
    if queries.size == 0 or items.shape[0] < 2:
        return None
    scores = queries @ items.T
    scores = scores[scores < 0.999]  # a query that is an item of the collection must not match itself
    if scores.size < 10:
        return None
    return float(scores.mean()), float(max(scores.std(), 1e-3))


def fit_calibration(collection: Collection, encoders: list[TextEncoder], seed: int = 0) -> Calibration:
    rng = random.Random(seed)
    calib = Calibration(counts=space_counts(collection))
    texts = _query_texts(collection, rng)
    for enc in encoders:
        samples = _sample_vectors(collection, enc.space, enc.dim, rng)
        if not samples:
            continue
        text_queries = enc.encode_texts(texts)
        image_queries = samples.get("image", np.zeros((0, enc.dim), np.float32))[:SAMPLE_QUERIES]
        for modality, vectors in samples.items():
            fitted = _background(text_queries, vectors)
            if fitted:
                calib.stats[f"{enc.space}:text>{modality}"] = fitted
            if hasattr(enc, "encode_images"):
                fitted = _background(image_queries, vectors)
                if fitted:
                    calib.stats[f"{enc.space}:image>{modality}"] = fitted
    calib.stats.update(_lexical_backgrounds(collection, texts))
    return calib


def _lexical_backgrounds(collection: Collection, texts: list[str]) -> dict[str, tuple[float, float]]:
    """(mean, std) of BM25 scores for the sample queries against every item with text, an item that shares
    no word with a query scoring 0; a snippet's own item (its best hit) is left out, as the dense background
    leaves out a query that is an item. One background for every modality's list: BM25 scores of one index
    are already comparable (no modality gap), and a per-modality fit would blow up the z-scores of short
    captions, whose background is narrow."""
    from mmrag.store import lexical

    snippets_from = SAMPLE_QUERIES // 2
    with collection.db.session() as session:
        if not lexical.available(session):
            return {}
        counts = items.text_counts_by_modality(session, collection.name)
        total = squares = 0.0
        for position, text in enumerate(texts):
            found = lexical.search(session, collection.name, text, LEXICAL_BACKGROUND_DEPTH, list(counts))
            for ranked in found.values():
                scores = [score for _, score in ranked[1 if position >= snippets_from else 0 :]]
                total += sum(scores)
                squares += sum(score * score for score in scores)
    if total <= 0:
        return {}
    n = len(texts) * max(sum(int(c) for c in counts.values()), 1)
    mean = total / n
    std = max(float(np.sqrt(max(squares / n - mean * mean, 0.0))), 1e-3)
    return {f"lexical:text>{modality}": (mean, std) for modality in counts}


def space_counts(collection: Collection) -> dict[str, int]:
    return items.vector_counts_by_space(collection.db, collection.name)


def load_or_fit(collection: Collection, encoders: list[TextEncoder]) -> Calibration:
    """The collection's calibration, refitted when the collection changed enough since the last fit."""
    path: Path = collection.dir / "calibration.json"
    counts = space_counts(collection)
    if path.exists():
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") == CALIBRATION_VERSION:
                calib = Calibration({k: tuple(v) for k, v in raw["stats"].items()}, raw["counts"])  # type: ignore[misc]
                if not calib.stale(counts):
                    return calib
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable calibration %s: %s", path, exc)
    calib = fit_calibration(collection, encoders)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"version": CALIBRATION_VERSION, "stats": calib.stats, "counts": calib.counts}))
    tmp.replace(path)
    return calib
