"""What each retrieval stage buys, on an indexed evaluation set: dense only, lexical only, fused, + one hit
per page, + contents/index pages demoted; calibrated and RRF fusion.

    python -m bench.ablation --data-dir evaldata --qrels evalset/qrels-sections.jsonl [--config offline]

Each query is searched once (every dense list and the lexical list, at the depth `Retriever.search` uses
for k = 10 with pages on); each variant then fuses those same lists and runs the stages with
`Retriever.fuse` and `Retriever.after_fusion`, the code `mmrag query` and `mmrag eval` run. The scores are
those of `mmrag eval` (R@k = success@k, MRR, nDCG@10 over the top 10).
"""

from __future__ import annotations

import argparse
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmrag.evaluation import metrics
from mmrag.evaluation.qrels import load_qrels
from mmrag.evaluation.runner import hits_to_keys
from mmrag.retrieve.search import LEXICAL, Retriever

K = 10
VARIANTS: dict[str, dict[str, Any]] = {  # name -> which lists, and which stages after fusion
    "dense only": {"lists": "dense", "group_pages": False, "demote_lists": False},
    "lexical only": {"lists": "lexical", "group_pages": False, "demote_lists": False},
    "fused": {"lists": "all", "group_pages": False, "demote_lists": False},
    "fused + pages": {"lists": "all", "group_pages": True, "demote_lists": False},
    "fused + pages + contents demoted": {"lists": "all", "group_pages": True, "demote_lists": True},
    "dense + pages + contents demoted": {"lists": "dense", "group_pages": True, "demote_lists": True},
    "lexical + pages + contents demoted": {"lists": "lexical", "group_pages": True, "demote_lists": True},
}


def ablation(data_dir: Path, qrels: Path, config: str | None) -> list[dict[str, Any]]:
    from mmrag.runtime import open_runtime, resolve_settings

    settings, _ = resolve_settings(config, {"data_dir": data_dir})
    runtime = open_runtime(settings)
    try:
        queries = load_qrels(qrels)
        base = runtime.retriever()
        depth = max(K * 5, 30)  # what Retriever.search asks each list for, k = 10 with pages on
        searched = []
        for query in queries:
            lists = base.ranked_lists(query.text, None, depth)
            rows = runtime.collection.items_by_id({i for ranked in lists.values() for i, _ in ranked})
            searched.append((query, lists, rows))
        results = []
        for fusion in ("calibrated", "rrf"):
            for name, variant in VARIANTS.items():
                retriever = Retriever(
                    runtime.collection,
                    runtime.encoders,
                    fusion=fusion,
                    group_pages=variant["group_pages"],
                    demote_lists=variant["demote_lists"],
                    fold_duplicates=True,
                )
                retriever._calibration = base.calibration
                rankings: list[list[Hashable]] = []
                judgments: list[dict[Hashable, float]] = []
                for query, lists, rows in searched:
                    kept = {
                        n: ranked
                        for n, ranked in lists.items()
                        if variant["lists"] == "all"
                        or (n.startswith(LEXICAL) == (variant["lists"] == "lexical"))
                    }
                    used = {i: rows[i] for ranked in kept.values() for i, _ in ranked if i in rows}
                    kept = {n: [(i, s) for i, s in ranked if i in used] for n, ranked in kept.items()}
                    hits = retriever.after_fusion(retriever.fuse(kept, used), used, query.text)[:K]
                    rankings.append(hits_to_keys(query, hits))
                    judgments.append({i: entry.grade for i, entry in enumerate(query.relevant)})
                results.append(
                    {
                        "fusion": fusion,
                        "ranking": name,
                        **{f"R@{k}": metrics.recall_at_k(rankings, judgments, k) for k in (1, 5, 10)},
                        "MRR": metrics.mrr(rankings, judgments),
                        "nDCG@10": metrics.mean_ndcg_at_k(rankings, judgments, 10),
                    }
                )
        return results
    finally:
        runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--qrels", type=Path, required=True)
    parser.add_argument(
        "--config", default=None, help="settings file or profile (a collection remembers its own)"
    )
    args = parser.parse_args()
    table = Table(title=f"Ablation: {args.qrels}")
    for column in ("fusion", "ranking", "R@1", "R@5", "R@10", "MRR", "nDCG@10"):
        table.add_column(column)
    for row in ablation(args.data_dir, args.qrels, args.config):
        table.add_row(
            row["fusion"],
            row["ranking"],
            *(f"{row[c]:.2f}" for c in ("R@1", "R@5", "R@10", "MRR", "nDCG@10")),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
