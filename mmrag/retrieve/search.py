"""Query a collection: embed the query in each space, search each index, fuse, attach the metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from mmrag.collection import Collection
from mmrag.embed.base import ImageEncoder, TextEncoder
from mmrag.retrieve.fusion import reciprocal_rank_fusion


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
    ranks: dict[str, int] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class Retriever:
    def __init__(self, collection: Collection, encoders: list[TextEncoder]) -> None:
        self.collection = collection
        self.encoders = encoders

    def search(self, text: str | None = None, image: Image.Image | None = None, k: int = 10) -> list[Hit]:
        if not text and image is None:
            raise ValueError("a query needs text, an image, or both")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        lists: dict[str, list[tuple[int, float]]] = {}
        depth = max(k * 3, 30)  # fuse deeper than k so items ranked lower in one list can still surface
        for enc in self.encoders:
            queries: dict[str, np.ndarray] = {}
            if text:
                queries["text"] = enc.encode_texts([text])
            if image is not None and isinstance(enc, ImageEncoder) and hasattr(enc, "encode_images"):
                queries["image"] = enc.encode_images([image])
            for kind, vec in queries.items():
                scores, ids = self.collection.search(enc.space, vec, depth)
                lists[f"{enc.space}:{kind}"] = [
                    (int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=False) if i >= 0
                ]
        fused = reciprocal_rank_fusion(lists, k)
        rows = self.collection.items_by_id(h.item_id for h in fused)
        hits = []
        for h in fused:
            if h.item_id not in rows:  # an index entry the database no longer has: never returned
                continue
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
                )
            )
        return hits
