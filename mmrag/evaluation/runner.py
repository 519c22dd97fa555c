"""Run qrels queries through a search function and score the rankings it returns.

The search function is the only link to the retriever, so the scoring runs on any ranking source: the
fused `Retriever.search`, one embedding space of it, or a fixed table of rankings in a test.

    queries = load_qrels("eval/qrels.jsonl")
    report = run_eval(queries, retriever_search_fn(retriever, queries), per_space=["clip", "text"])
    Console().print(render_report(report))

Each hit is turned into a key: the qrels entry it matched (its own file and page, or those of a copy of
its picture folded into it, listed in `also_in`), or a unique "miss" key. Several hits of one
relevant document (three chunks of notes.md) then share one key, and the metrics count a key once, at its
first position; a hit matching both a page entry and a whole-file entry is credited to an entry not yet
found, the higher grade first, so a PDF page and its file can both be found by different hits.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.table import Table

from mmrag.errors import ConfigError
from mmrag.evaluation import metrics
from mmrag.evaluation.qrels import QrelsError, Query

__all__ = [
    "EvalReport",
    "HitLike",
    "QueryOutcome",
    "RankingReport",
    "SearchFn",
    "hits_to_keys",
    "render_report",
    "retriever_search_fn",
    "run_eval",
]

FUSED = "fused"


class HitLike(Protocol):
    """What scoring needs from a hit; `mmrag.retrieve.search.Hit` is one."""

    @property
    def path(self) -> str: ...

    @property
    def page(self) -> int | None: ...


class SearchFn(Protocol):
    """search_fn(query, k) -> hits best first; with spaces=[name], search only that embedding space.

    run_eval calls it as `search_fn(query, k)` for the fused ranking, so a plain two-argument function
    is enough when `per_space` is empty, and `search_fn(query, k, spaces=[space])` for each space.
    """

    def __call__(self, query: Query, k: int, spaces: Sequence[str] | None = None) -> Sequence[HitLike]: ...


@dataclass
class QueryOutcome:
    query_id: str
    first_relevant_rank: int | None  # 1-based; None when nothing relevant came back within the depth
    ndcg: float
    latency_ms: float
    returned: int  # hits the search returned


@dataclass
class RankingReport:
    name: str  # "fused" or an embedding space
    queries: int
    recall: dict[int, float]  # k -> success@k
    mrr: float
    ndcg: float  # at EvalReport.ndcg_k
    latency_p50_ms: float
    latency_p95_ms: float
    per_query: list[QueryOutcome] = field(default_factory=list)

    def to_dict(self, ndcg_k: int) -> dict[str, Any]:
        return {
            "queries": self.queries,
            **{f"recall@{k}": value for k, value in self.recall.items()},
            "mrr": self.mrr,
            f"ndcg@{ndcg_k}": self.ndcg,
            "latency_ms": {"p50": self.latency_p50_ms, "p95": self.latency_p95_ms},
            "per_query": [outcome.__dict__.copy() for outcome in self.per_query],
        }


@dataclass
class EvalReport:
    k_values: tuple[int, ...]
    ndcg_k: int
    depth: int  # how many hits each search was asked for
    rankings: list[RankingReport]  # the fused ranking first, then one per evaluated space

    @property
    def fused(self) -> RankingReport:
        return self.ranking(FUSED)

    def ranking(self, name: str) -> RankingReport:
        for ranking in self.rankings:
            if ranking.name == name:
                return ranking
        raise KeyError(f"no ranking {name!r}; have {[r.name for r in self.rankings]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: settings, then one entry per ranking (recall@k, mrr, ndcg@k, latency)."""
        return {
            "k_values": list(self.k_values),
            "ndcg_k": self.ndcg_k,
            "depth": self.depth,
            "rankings": {r.name: r.to_dict(self.ndcg_k) for r in self.rankings},
        }


def run_eval(
    queries: Sequence[Query],
    search_fn: SearchFn | Callable[[Query, int], Sequence[HitLike]],
    k_values: Sequence[int] = (1, 5, 10),
    per_space: Sequence[str] = (),
    ndcg_k: int = 10,
    warmup: bool = True,
) -> EvalReport:
    """Search every query, fused and then in each space of `per_space`, and score the rankings.

    Each search asks for max(k_values, ndcg_k) hits. Latency is wall time around each search_fn call
    (time.perf_counter); with `warmup`, the first query is searched once untimed per ranking first, so
    lazily loaded models do not count as one slow search.
    """
    if not queries:
        raise ValueError("no queries to evaluate")
    ks = tuple(sorted(set(k_values)))
    if not ks or ks[0] < 1 or ndcg_k < 1:
        raise ValueError(f"k values must be at least 1, got {list(k_values)} and ndcg_k={ndcg_k}")
    depth = max(ks[-1], ndcg_k)
    rankings = [_run_ranking(FUSED, queries, search_fn, None, ks, ndcg_k, depth, warmup)]
    for space in per_space:
        rankings.append(_run_ranking(space, queries, search_fn, [space], ks, ndcg_k, depth, warmup))
    return EvalReport(k_values=ks, ndcg_k=ndcg_k, depth=depth, rankings=rankings)


def hits_to_keys(query: Query, hits: Sequence[HitLike]) -> list[Hashable]:
    """The ranking as keys: the index of the qrels entry each hit is credited to, or ("miss", position)."""
    credited: set[int] = set()
    keys: list[Hashable] = []
    for position, hit in enumerate(hits):
        matched = query.matching_entries(hit.path, hit.page)
        # copies of a picture folded into this hit are shown with it ("also in: report.pdf p.3")
        for copy in getattr(hit, "also_in", None) or ():
            matched += [i for i in query.matching_entries(copy["path"], copy["page"]) if i not in matched]
        if not matched:
            keys.append(("miss", position))
            continue
        fresh = [i for i in matched if i not in credited]
        # A later hit of an already-found document repeats its key, which the metrics count once.
        key = max(fresh, key=lambda i: (query.relevant[i].grade, -i)) if fresh else matched[0]
        credited.add(key)
        keys.append(key)
    return keys


def _run_ranking(
    name: str,
    queries: Sequence[Query],
    search_fn: Callable[..., Sequence[HitLike]],
    spaces: list[str] | None,
    ks: tuple[int, ...],
    ndcg_k: int,
    depth: int,
    warmup: bool,
) -> RankingReport:
    def search(query: Query) -> Sequence[HitLike]:
        return search_fn(query, depth) if spaces is None else search_fn(query, depth, spaces=spaces)

    if warmup:
        search(queries[0])
    rankings: list[list[Hashable]] = []
    judgments: list[dict[Hashable, float]] = []
    latencies_ms: list[float] = []
    outcomes: list[QueryOutcome] = []
    for query in queries:
        started = time.perf_counter()
        hits = list(search(query))[:depth]
        latency_ms = (time.perf_counter() - started) * 1000.0
        keys = hits_to_keys(query, hits)
        graded: dict[Hashable, float] = {i: entry.grade for i, entry in enumerate(query.relevant)}
        rankings.append(keys)
        judgments.append(graded)
        latencies_ms.append(latency_ms)
        outcomes.append(
            QueryOutcome(
                query_id=query.id,
                first_relevant_rank=metrics.first_relevant_rank(keys, graded),
                ndcg=metrics.ndcg_at_k(keys, graded, ndcg_k),
                latency_ms=latency_ms,
                returned=len(hits),
            )
        )
    return RankingReport(
        name=name,
        queries=len(queries),
        recall={k: metrics.recall_at_k(rankings, judgments, k) for k in ks},
        mrr=metrics.mrr(rankings, judgments),
        ndcg=metrics.mean_ndcg_at_k(rankings, judgments, ndcg_k),
        latency_p50_ms=metrics.percentile(latencies_ms, 50),
        latency_p95_ms=metrics.percentile(latencies_ms, 95),
        per_query=outcomes,
    )


def render_report(report: EvalReport, title: str = "Retrieval evaluation") -> Table:
    """One row per ranking: queries, success@k for each k, MRR, nDCG, latency p50/p95 in ms."""
    table = Table(title=title)
    table.add_column("ranking")
    table.add_column("queries", justify="right")
    for k in report.k_values:
        table.add_column(f"R@{k}", justify="right")
    table.add_column("MRR", justify="right")
    table.add_column(f"nDCG@{report.ndcg_k}", justify="right")
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for ranking in report.rankings:
        table.add_row(
            ranking.name,
            str(ranking.queries),
            *(f"{ranking.recall[k]:.3f}" for k in report.k_values),
            f"{ranking.mrr:.3f}",
            f"{ranking.ndcg:.3f}",
            f"{ranking.latency_p50_ms:.1f}",
            f"{ranking.latency_p95_ms:.1f}",
        )
    table.caption = "R@k: share of queries with a relevant item in the top k (success@k)"
    return table


def retriever_search_fn(retriever: Any, queries: Sequence[Query]) -> SearchFn:
    """Adapt `mmrag.retrieve.search.Retriever` to a SearchFn.

    Query images are decoded here, once, before any search, so decoding is not timed as search latency.
    Per-space searches need `Retriever.search(..., spaces=...)`.
    """
    from PIL import Image

    images: dict[Path, Image.Image] = {}
    for query in queries:
        if query.image is not None and query.image not in images:
            try:
                with Image.open(query.image) as opened:
                    images[query.image] = opened.convert("RGB")
            except (OSError, Image.DecompressionBombError) as exc:
                raise QrelsError(f"query {query.id!r}: cannot read image {query.image}: {exc}") from None
    takes_spaces = "spaces" in inspect.signature(retriever.search).parameters

    def search(query: Query, k: int, spaces: Sequence[str] | None = None) -> Sequence[HitLike]:
        image = images.get(query.image) if query.image is not None else None
        if spaces is None:
            return retriever.search(text=query.text, image=image, k=k)
        if not takes_spaces:
            raise ConfigError(
                "this Retriever.search has no 'spaces' argument, so spaces cannot be scored alone"
            )
        return retriever.search(text=query.text, image=image, k=k, spaces=list(spaces))

    return search
