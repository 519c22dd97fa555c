"""Merge ranked lists from different queries or embedding spaces into one ranking.

Raw cosine scores are not comparable across spaces or modalities (CLIP text->image similarities sit far
below text->text ones), so merging by raw score ranks every text chunk above every image. Two fusions that
are comparable: reciprocal rank fusion (Cormack et al., SIGIR 2009), and calibrated scores (z-scores
against each list's background distribution per modality, see calibration.py), merged by their maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

RRF_K = 60  # the constant from the paper; damps the head of each list

# (item id, raw score) pairs, best first, per list name ("clip:text", "text:text", "clip:image", ...)
RankedLists = Mapping[str, Sequence[tuple[int, float]]]


@dataclass
class FusedHit:
    item_id: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # list name -> 1-based rank in that list
    scores: dict[str, float] = field(default_factory=dict)  # list name -> raw similarity
    calibrated: dict[str, float] = field(default_factory=dict)  # list name -> z-score (calibrated fusion)


def _collect(lists: RankedLists) -> dict[int, FusedHit]:
    fused: dict[int, FusedHit] = {}
    for name, ranked in lists.items():
        for rank, (item_id, score) in enumerate(ranked, start=1):
            hit = fused.setdefault(item_id, FusedHit(item_id, 0.0))
            if name not in hit.ranks:  # the same id twice in one list: keep its best rank
                hit.ranks[name] = rank
                hit.scores[name] = float(score)
    return fused


def _top(fused: dict[int, FusedHit], k: int) -> list[FusedHit]:
    return sorted(fused.values(), key=lambda h: (-h.score, -len(h.ranks), h.item_id))[:k]


def reciprocal_rank_fusion(lists: RankedLists, k: int, rrf_k: int = RRF_K) -> list[FusedHit]:
    """An item in several lists is counted once, its RRF contributions summed."""
    fused = _collect(lists)
    for hit in fused.values():
        hit.score = sum(1.0 / (rrf_k + r) for r in hit.ranks.values())
    return _top(fused, k)


def calibrated_fusion(
    lists: RankedLists, k: int, modality_of: Mapping[int, str], z: Callable[[str, str, float], float]
) -> list[FusedHit]:
    """Each hit's score is its best z-score over the lists that found it."""
    fused = _collect(lists)
    for hit in fused.values():
        modality = modality_of.get(hit.item_id, "")
        hit.calibrated = {name: z(name, modality, s) for name, s in hit.scores.items()}
        hit.score = max(hit.calibrated.values())
    return _top(fused, k)


def raw_score_merge(lists: RankedLists, k: int) -> list[FusedHit]:
    """Merging by raw cosine, as naive multimodal retrievers do. Kept to show, and test, why not to."""
    fused = _collect(lists)
    for hit in fused.values():
        hit.score = max(hit.scores.values())
    return _top(fused, k)
