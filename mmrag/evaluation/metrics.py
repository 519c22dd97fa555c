"""Ranking metrics over plain keys: what a ranking returned, in order, against what a person judged relevant.

The functions know nothing about hits, paths or pages; `mmrag.evaluation.runner` turns hits into keys
(the qrels entry each hit matched) first. A key that appears several times in one ranking counts once,
at its first position: three chunks of the same relevant note are one found note, not three.

`recall_at_k` and `mrr` are means over queries; `ndcg_at_k` scores one ranking and `mean_ndcg_at_k`
averages it over queries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

__all__ = [
    "dcg",
    "first_relevant_rank",
    "mean_ndcg_at_k",
    "mrr",
    "ndcg_at_k",
    "percentile",
    "recall_at_k",
    "reciprocal_rank",
]

Judgments = Mapping[Hashable, float] | Iterable[Hashable]
"""Relevant keys: a set (every key gain 1) or key -> grade (graded gains, all > 0)."""


def first_relevant_rank(ranked: Sequence[Hashable], relevant: Iterable[Hashable]) -> int | None:
    """1-based rank of the first relevant key in `ranked`, or None when none is there."""
    relevant_keys = set(relevant)
    for rank, key in enumerate(ranked, start=1):
        if key in relevant_keys:
            return rank
    return None


def recall_at_k(
    rankings: Sequence[Sequence[Hashable]], relevant: Sequence[Iterable[Hashable]], k: int
) -> float:
    """Fraction of queries with at least one relevant key in their top `k`.

    This is "success@k" (hit rate), the quantity image-retrieval papers report as Recall@k: a query counts
    1 when anything relevant is in the top k, else 0, however many relevant items it has. It is not the
    fraction of a query's relevant items that were found (the IR meaning of recall).
    """
    _check_k(k)
    _check_same_length(rankings, relevant)
    found = 0
    for ranked, judged in zip(rankings, relevant, strict=True):
        rank = first_relevant_rank(ranked, judged)
        if rank is not None and rank <= k:
            found += 1
    return found / len(rankings)


def reciprocal_rank(ranked: Sequence[Hashable], relevant: Iterable[Hashable]) -> float:
    """1 / rank of the first relevant key; 0 when no relevant key is anywhere in `ranked`."""
    rank = first_relevant_rank(ranked, relevant)
    return 0.0 if rank is None else 1.0 / rank


def mrr(rankings: Sequence[Sequence[Hashable]], relevant: Sequence[Iterable[Hashable]]) -> float:
    """Mean reciprocal rank over queries. A ranking is only as deep as the search was asked to go, so
    this is MRR@depth; a query whose relevant items were all past that depth scores 0."""
    _check_same_length(rankings, relevant)
    total = sum(reciprocal_rank(r, j) for r, j in zip(rankings, relevant, strict=True))
    return total / len(rankings)


def dcg(gains: Sequence[float]) -> float:
    """Discounted cumulative gain: sum of gain_i / log2(i + 1) over 1-based positions i."""
    return sum(gain / math.log2(position + 1) for position, gain in enumerate(gains, start=1))


def ndcg_at_k(ranked: Sequence[Hashable], judgments: Judgments, k: int) -> float:
    """Normalised DCG of one ranking's top `k`, in [0, 1].

    Gains are the grades themselves (linear, as trec_eval computes nDCG); a set of keys means gain 1
    each. Each relevant key earns its gain once, at its first position. The ideal DCG is that of the
    judged keys sorted by grade, cut at k, so relevant items the ranking never returned still lower the
    score. No judgments at all gives 0.
    """
    _check_k(k)
    grades = _grades(judgments)
    ideal = dcg(sorted(grades.values(), reverse=True)[:k])
    if ideal == 0.0:
        return 0.0
    seen: set[Hashable] = set()
    gains: list[float] = []
    for key in ranked[:k]:
        if key in grades and key not in seen:
            seen.add(key)
            gains.append(grades[key])
        else:
            gains.append(0.0)
    return dcg(gains) / ideal


def mean_ndcg_at_k(rankings: Sequence[Sequence[Hashable]], judgments: Sequence[Judgments], k: int) -> float:
    """ndcg_at_k averaged over queries."""
    _check_same_length(rankings, judgments)
    return sum(ndcg_at_k(r, j, k) for r, j in zip(rankings, judgments, strict=True)) / len(rankings)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default).

    With few samples the high percentiles are close to the maximum: p95 of 20 latencies sits between the
    19th and 20th slowest.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def _grades(judgments: Judgments) -> dict[Hashable, float]:
    if isinstance(judgments, Mapping):
        grades = {key: float(grade) for key, grade in judgments.items()}
        for key, grade in grades.items():
            if grade <= 0:
                raise ValueError(f"grade of {key!r} is {grade}; list only relevant keys, with grades > 0")
        return grades
    return dict.fromkeys(judgments, 1.0)


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def _check_same_length(rankings: Sequence[object], relevant: Sequence[object]) -> None:
    if not rankings:
        raise ValueError("no queries to average over")
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance judgments")
