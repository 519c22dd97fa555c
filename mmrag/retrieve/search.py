"""Query a collection: embed the query in each space, search each index, fuse, attach the metadata."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from mmrag.caption.base import Captioner
from mmrag.collection import Collection
from mmrag.embed.base import TextEncoder
from mmrag.filters import Filters
from mmrag.index.base import split_key
from mmrag.ingest.images import fit_for_model
from mmrag.ingest.listpages import LIST_PAGE_KEY
from mmrag.retrieve.calibration import Calibration, load_or_fit
from mmrag.retrieve.duplicates import fold_duplicates
from mmrag.retrieve.fusion import FusedHit, calibrated_fusion, raw_score_merge, reciprocal_rank_fusion
from mmrag.retrieve.pages import demote_list_pages, group_pages
from mmrag.retrieve.rerank import Reranker, rerank_hits, reranker_from_settings
from mmrag.settings import Settings
from mmrag.store import lexical as lexical_index
from mmrag.store.duplicates import other_copies
from mmrag.store.models import Document, Item

# (stage: "embed" | "caption" | "search" | "lexical" | "fuse" | "rerank", seconds)
StageTimer = Callable[[str, float], None]
ItemFilter = Callable[[Item, Document], bool]
LEXICAL = "lexical"  # the lexical list's "space": lists "lexical:text>text", "lexical:text>image", ...
DENSE = "dense"  # in `spaces`: every embedding space, without the lexical lists


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
    more_on_page: int = 0  # other items of this PDF page that matched, folded into this hit
    # other copies of this picture (near-duplicates folded into this hit): {"path": ..., "page": 3 | None}
    also_in: list[dict[str, Any]] = field(default_factory=list)
    list_page: bool = False  # a table of contents or index page (ranked below the pages it lists)

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
        *,
        lexical: bool = True,
        group_pages: bool = True,
        demote_lists: bool = True,
        fold_duplicates: bool = True,
        reranker: Reranker | None = None,
        rerank_top_n: int = 50,
    ) -> None:
        self.collection = collection
        self.encoders = list(encoders)
        self.fusion = fusion
        self.captioner = captioner  # describes a query image where no space can embed images (caption road)
        self._calibration: Calibration | None = None
        self.on_stage = on_stage  # the service's per-stage latency histograms
        self.lexical = lexical  # a BM25 list over the items' words, for text queries
        self.group_pages = group_pages  # one hit per PDF page
        self.demote_lists = demote_lists  # contents and index pages below the pages they list
        self.fold_duplicates = fold_duplicates  # one hit per picture, its other copies in `also_in`
        self.reranker = reranker
        self.rerank_top_n = rerank_top_n
        self._common_words = lexical_index.CommonWords()

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
        """`spaces` restricts the search to spaces ("text", "lexical"), single indexes ("text.image",
        "lexical.text") or every embedding space ("dense"); None = all. `filters` restricts it to the items
        they accept, inside each index's search (the lexical list's too)."""
        lists: dict[str, list[tuple[int, float]]] = {}
        for enc in self.encoders:
            wanted = [
                m
                for m in self.collection.modalities(enc.space)
                if (spaces is None or {enc.space, DENSE, f"{enc.space}.{m}"} & set(spaces))
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
        if text and self.lexical:
            lists.update(self._lexical_lists(text, depth, spaces, filters))
        return lists

    def _lexical_lists(
        self, text: str, depth: int, spaces: Sequence[str] | None, filters: Filters | None
    ) -> dict[str, list[tuple[int, float]]]:
        """BM25 lists, one per modality the collection holds, named like the dense ones."""
        modalities = sorted({split_key(key)[1] for key in self.collection.index_keys()})
        wanted = [
            m
            for m in modalities
            if (spaces is None or {LEXICAL, f"{LEXICAL}.{m}"} & set(spaces))
            and (filters is None or filters.wants_modality(m))
        ]
        if not wanted:
            return {}
        with self._stage("lexical"):
            found = self.collection.lexical_search(text, depth, wanted, filters, self._common_words)
        return {f"{LEXICAL}:text>{modality}": ranked for modality, ranked in found.items()}

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
        # fuse deeper than k so items ranked lower in one list can still surface, and k pages survive the
        # grouping of chunks into pages
        depth = max(depth or 0, k * (5 if self.group_pages else 3), 30)
        if self.reranker is not None and text:
            depth = max(depth, self.rerank_top_n)
        lists = self.ranked_lists(text, image, depth, spaces, filters)
        rows = self.collection.items_by_id({i for ranked in lists.values() for i, _ in ranked})
        if filters is not None and filters.narrows_items:  # a store's stale entry never slips through
            rows = {i: r for i, r in rows.items() if filters.accepts_document(r[1].id, r[1].path, r[1].meta)}
        if item_filter is not None:
            rows = {i: row for i, row in rows.items() if item_filter(*row)}
        # an index entry the database no longer has is never returned
        lists = {name: [(i, s) for i, s in ranked if i in rows] for name, ranked in lists.items()}
        return self.after_fusion(self.fuse(lists, rows, fusion), rows, text)[:k]

    def fuse(
        self,
        lists: dict[str, list[tuple[int, float]]],
        rows: dict[int, tuple[Item, Document]],
        fusion: str | None = None,
    ) -> list[Hit]:
        """Every candidate of `lists` in one ranking (the stages after fusion regroup and reorder them)."""
        method = fusion or self.fusion
        if method == "calibrated":
            calibration = self.calibration  # fitted on first use: not part of the fuse stage's time
        with self._stage("fuse"):
            if method == "rrf":
                fused = reciprocal_rank_fusion(lists, len(rows))
            elif method == "raw":
                fused = raw_score_merge(lists, len(rows))
            elif method == "calibrated":
                modality_of = {i: item.modality for i, (item, _) in rows.items()}
                fused = calibrated_fusion(lists, len(rows), modality_of, calibration.z)
            else:
                raise ValueError(f"unknown fusion {method!r}: use calibrated, rrf or raw")
        return self._hits(fused, rows)

    def after_fusion(
        self, hits: list[Hit], rows: dict[int, tuple[Item, Document]], text: str | None
    ) -> list[Hit]:
        """The stages after fusion, each when switched on: one hit per page, one per picture, the
        reranker, and contents/index pages below the pages they list."""
        if self.group_pages:
            hits = group_pages(hits)
        if self.fold_duplicates:
            hits = self._fold_duplicates(hits)
        if self.reranker is not None and text:
            with self._stage("rerank"):
                hits = rerank_hits(self.reranker, text, hits, self.rerank_top_n)
        if self.demote_lists:
            hits = demote_list_pages(hits, {i: item.meta or {} for i, (item, _) in rows.items()})
        return hits

    def _fold_duplicates(self, hits: list[Hit]) -> list[Hit]:
        """One hit per picture: copies of a better-ranked image are dropped, and named in its `also_in`."""
        images = [hit.item_id for hit in hits if hit.modality == "image"]
        copies = other_copies(self.collection.db, self.collection.name, images) if images else {}
        if not copies:
            return hits
        return [
            replace(folded.hit, also_in=[{"path": copy.path, "page": copy.page} for copy in folded.also_in])
            for folded in fold_duplicates(hits, copies)
        ]

    @staticmethod
    def _hits(fused: Sequence[FusedHit], rows: dict[int, tuple[Item, Document]]) -> list[Hit]:
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
                    list_page=LIST_PAGE_KEY in (item.meta or {}),
                )
            )
        return hits


def retriever_from_settings(
    settings: Settings,
    collection: Collection,
    encoders: Sequence[TextEncoder],
    captioner: Captioner | None = None,
    on_stage: StageTimer | None = None,
) -> Retriever:
    """The Retriever `settings.retrieve` describes: fusion, lexical list, pages, duplicates, reranker."""
    retrieve = settings.retrieve
    return Retriever(
        collection,
        encoders,
        fusion=retrieve.fusion,
        captioner=captioner,
        on_stage=on_stage,
        lexical=retrieve.lexical,
        group_pages=retrieve.group_pages,
        demote_lists=retrieve.demote_list_pages,
        fold_duplicates=retrieve.fold_duplicates,
        reranker=reranker_from_settings(
            retrieve, device=settings.models.device, cache_dir=settings.models.cache_dir
        ),
        rerank_top_n=retrieve.rerank_top_n,
    )
