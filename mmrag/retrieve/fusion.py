"""Merge ranked lists from different queries or embedding spaces into one ranking.

Raw cosine scores are not comparable across spaces (CLIP text->image similarities sit far below
text->text ones), so lists are fused by rank: reciprocal rank fusion (Cormack et al., SIGIR 2009).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

RRF_K = 60  # the constant from the paper; damps the head of each list


@dataclass
class FusedHit:
    item_id: int
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # list name -> 1-based rank in that list
    scores: dict[str, float] = field(default_factory=dict)  # list name -> raw similarity


def reciprocal_rank_fusion(
    lists: Mapping[str, Sequence[tuple[int, float]]], k: int, rrf_k: int = RRF_K
) -> list[FusedHit]:
    """`lists` maps a list name to (item_id, raw score) pairs, best first. An item in several lists is
    counted once, its RRF contributions summed."""
    fused: dict[int, FusedHit] = {}
    for name, ranked in lists.items():
        for rank, (item_id, score) in enumerate(ranked, start=1):
            hit = fused.setdefault(item_id, FusedHit(item_id, 0.0))
            if name in hit.ranks:  # the same id twice in one list: keep its best rank
                continue
            hit.score += 1.0 / (rrf_k + rank)
            hit.ranks[name] = rank
            hit.scores[name] = float(score)
    return sorted(fused.values(), key=lambda h: (-h.score, h.item_id))[:k]
