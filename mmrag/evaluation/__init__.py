"""Retrieval evaluation: ranking metrics, qrels files, a runner over any search function, and builders of
small labelled sets from real offline data. Format and usage: docs/evaluation.md.

The dataset builders are not imported here: they need the development dependencies (scikit-image,
scikit-learn, matplotlib); import them from `mmrag.evaluation.datasets`.
"""

from __future__ import annotations

from mmrag.evaluation.qrels import QrelsError, Query, RelevantItem, load_qrels, write_qrels
from mmrag.evaluation.runner import (
    EvalReport,
    HitLike,
    QueryOutcome,
    RankingReport,
    SearchFn,
    hits_to_keys,
    render_report,
    retriever_search_fn,
    run_eval,
)

__all__ = [
    "EvalReport",
    "HitLike",
    "QrelsError",
    "Query",
    "QueryOutcome",
    "RankingReport",
    "RelevantItem",
    "SearchFn",
    "hits_to_keys",
    "load_qrels",
    "render_report",
    "retriever_search_fn",
    "run_eval",
    "write_qrels",
]
