"""Query a collection: embed the query in each space, search each index, fuse, attach the metadata."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from mmrag.caption.base import Captioner
from mmrag.collection import Collection
from mmrag.embed.base import TextEncoder
from mmrag.filters import Filters
from mmrag.ingest.images import fit_for_model
from mmrag.retrieve.calibration import Calibration, load_or_fit
from mmrag.retrieve.fusion import calibrated_fusion, raw_score_merge, reciprocal_rank_fusion
from mmrag.store.models import Document, Item

StageTimer = Callable[[str, float], None]  # (stage: "embed" | "caption" | "search" | "fuse", seconds)
ItemFilter = Callable[[Item, Document], bool]


@dataclass
class Hit:
    item_id: int
    score: float
    modality: str
    path: str
    page: int | None
    bbox: list[float] | None
    text: str | None
    thumbnail: str | None
    # per list "space:query kind>item modality": "clip:text>image" = text query, CLIP space, image index
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # raw cosine per list
    calibrated: dict[str, float] = field(default_factory=dict)  # z-score per list (calibrated fusion)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Retriever:
    def __init__(
        self,
        collection: Collection,
        encoders: Sequence[TextEncoder],
        fusion: str = "calibrated",
        captioner: Captioner | None = None,
        on_stage: StageTimer | None = None,
    ) -> None:
        self.collection = collection
        self.encoders = list(encoders)
        self.fusion = fusion
        self.captioner = captioner  # describes a query image where no space can embed images (caption road)
        self._calibration: Calibration | None = None
        self.on_stage = on_stage  # the service's per-stage latency histograms

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if self.on_stage is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.on_stage(name, time.perf_counter() - start)

    @property
    def calibration(self) -> Calibration:
        if self._calibration is None:
            self._calibration = load_or_fit(self.collection, self.encoders)
        return self._calibration

    def ranked_lists(
        self,
        text: str | None,
        image: Image.Image | None,
        depth: int,
        spaces: Sequence[str] | None = None,
        filters: Filters | None = None,
    ) -> dict[str, list[tuple[int, float]]]:
        """`spaces` restricts the search to spaces ("text") or single indexes ("text.image"); None = all.
        `filters` restricts it to the items they accept, inside each index's search."""
        lists: dict[str, list[tuple[int, float]]] = {}
        for enc in self.encoders:
            wanted = [
                m
                for m in self.collection.modalities(enc.space)
                if (spaces is None or enc.space in spaces or f"{enc.space}.{m}" in spaces)
                and (filters is None or filters.wants_modality(m))
            ]
            if not wanted:
                continue
            queries: dict[str, np.ndarray] = {}
            if text:
                with self._stage("embed"):
                    queries["text"] = enc.encode_texts([text])
            if image is not None:
                if hasattr(enc, "encode_images"):
                    with self._stage("embed"):
                        queries["image"] = enc.encode_images([image])
                elif self.captioner is not None:
                    with self._stage("caption"):
                        described = self.captioner.caption([image])[0]
                    if described.text:
                        with self._stage("embed"):
                            queries["image"] = enc.encode_texts([described.text])
            for kind, vec in queries.items():
                for modality in wanted:
                    with self._stage("search"):
                        scores, ids = self.collection.search(enc.space, modality, vec, depth, filters)
                    lists[f"{enc.space}:{kind}>{modality}"] = [
                        (int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
                    ]
        return lists

    def search(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        k: int = 10,
        spaces: Sequence[str] | None = None,
        fusion: str | None = None,
        item_filter: ItemFilter | None = None,
        depth: int | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:
        """`filters` (modalities, documents, folders, metadata) are applied inside each index's search, so
        k hits come back whenever k items match. `item_filter` keeps only the items it accepts, after the
        search and before fusion (a test the stores cannot run; pass a larger `depth`, how deep each list
        is searched, so that enough items survive it)."""
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self.collection.refresh():  # another process wrote: its items are searched too
            self._calibration = None  # looked at again: refitted if the collection grew enough
        if image is not None:
            image = fit_for_model(image)
        # fuse deeper than k so items ranked lower in one list can still surface
        depth = max(depth or 0, k * 3, 30)
        lists = self.ranked_lists(text, image, depth, spaces, filters)
        rows = self.collection.items_by_id({i for ranked in lists.values() for i, _ in ranked})
        if filters is not None and filters.narrows_items:  # a store's stale entry never slips through
            rows = {i: r for i, r in rows.items() if filters.accepts_document(r[1].id, r[1].path, r[1].meta)}
        if item_filter is not None:
            rows = {i: row for i, row in rows.items() if item_filter(*row)}
        # an index entry the database no longer has is never returned
        lists = {name: [(i, s) for i, s in ranked if i in rows] for name, ranked in lists.items()}
        method = fusion or self.fusion
        if method == "calibrated":
            calibration = self.calibration  # fitted on first use: not part of the fuse stage's time
        with self._stage("fuse"):
            if method == "rrf":
                fused = reciprocal_rank_fusion(lists, k)
            elif method == "raw":
                fused = raw_score_merge(lists, k)
            elif method == "calibrated":
                modality_of = {i: item.modality for i, (item, _) in rows.items()}
                fused = calibrated_fusion(lists, k, modality_of, calibration.z)
            else:
                raise ValueError(f"unknown fusion {method!r}: use calibrated, rrf or raw")
        hits = []
        for h in fused:
            item, doc = rows[h.item_id]
            hits.append(
                Hit(
                    item_id=item.id,
                    score=h.score,
                    modality=item.modality,
                    path=doc.path,
                    page=item.page,
                    bbox=item.bbox,
                    text=item.text,
                    thumbnail=item.thumbnail,
                    ranks=h.ranks,
                    scores=h.scores,
                    calibrated=h.calibrated,
                )
            )
        return hits
