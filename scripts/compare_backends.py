"""Do FAISS and Milvus Lite give the same answers? Index the same evaluation set with each backend, then
compare every labelled query's top 10 and check that filtered queries return k hits.

    python scripts/compare_backends.py WORK [--sets photos,gnuplot] [--k 10]

For each set: `mmrag make-eval-set SET WORK/SET`, then, with the offline profile,
`mmrag index` into WORK/SET-faiss and (MMRAG_INDEX__BACKEND=milvus MMRAG_INDEX__MILVUS__URI=WORK/SET-milvus/
milvus.db) into WORK/SET-milvus, exactly as a user runs it. The queries then run in this process through the
same Runtime the CLI uses (models load once), on each data dir in turn. Two top-10 lists are "the same" when
they hold the same items in the same order; where they differ, the script says whether the difference is a
tie (the swapped items' scores within 1e-3, float16 storage's rounding) or not. Results go to
WORK/compare.json. gnuplot needs Debian's gnuplot-doc.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIE = 1e-3


def _mmrag(*args: str, env: dict[str, str] | None = None) -> None:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "mmrag", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if run.returncode not in (0, 1):  # 1: some file failed, reported in stderr
        raise SystemExit(f"mmrag {' '.join(args)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    print(f"  mmrag {' '.join(args[:4])} ... {time.perf_counter() - started:.0f} s", flush=True)


def _queries(qrels: Path) -> list[str]:
    """The text queries of a qrels file (docs/evaluation.md)."""
    rows = [json.loads(line) for line in qrels.read_text().splitlines() if line.strip()]
    return [row["text"] for row in rows if row.get("text")]


def _search_all(data_dir: Path, queries: list[str], k: int, filter_paths: list[str]) -> dict[str, Any]:
    from mmrag.filters import Filters
    from mmrag.runtime import open_runtime, resolve_settings

    settings, _ = resolve_settings(None, {"data_dir": data_dir}, needs_models=True)
    rt = open_runtime(settings)
    try:
        retriever = rt.retriever()
        tops = []
        for text in queries:
            hits = retriever.search(text, None, k)
            tops.append([(h.path, h.page, h.modality, h.text or "", round(h.score, 6)) for h in hits])
        filtered = []
        for path in filter_paths:
            where = Filters.parse([f"path={path}", "modality=text"])
            hits = retriever.search(queries[0], None, k, filters=where)
            filtered.append({"path": path, "hits": len(hits), "all_match": all(h.path == path for h in hits)})
        backend = rt.collection.store.kind if rt.collection is not None else "?"
    finally:
        rt.close()
    return {"backend": backend, "tops": tops, "filtered": filtered}


def _compare(a: list[list[tuple]], b: list[list[tuple]]) -> dict[str, Any]:
    """Identical lists; lists that differ only where scores tie (rank by rank, the two scores within TIE:
    items with equal scores swapped, or a different item at a tied last place); and real differences."""
    same = ties = different = 0
    examples = []
    for query, (left, right) in enumerate(zip(a, b, strict=True)):
        if [x[:4] for x in left] == [x[:4] for x in right]:
            same += 1
        elif len(left) == len(right) and all(
            abs(x[4] - y[4]) <= TIE for x, y in zip(left, right, strict=True)
        ):
            ties += 1
        else:
            different += 1
            examples.append({"query": query, "faiss": left, "milvus": right})
    return {
        "queries": len(a),
        "same": same,
        "ties_only": ties,
        "different": different,
        "examples": examples[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--sets", default="photos,gnuplot")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for name in args.sets.split(","):
        folder = args.work / name
        print(f"{name}:", flush=True)
        if not folder.exists():
            _mmrag("make-eval-set", name, str(folder))
        (qrels,) = folder.glob("qrels-*.jsonl")
        runs = {}
        for backend in ("faiss", "milvus"):
            data_dir = args.work / f"{name}-{backend}"
            env = {"MMRAG_INDEX__BACKEND": backend}
            if backend == "milvus":
                env["MMRAG_INDEX__MILVUS__URI"] = str(data_dir / "milvus.db")
            if not (data_dir / "mmrag.db").exists():
                _mmrag("--config", "offline", "--data-dir", str(data_dir), "index", str(folder), env=env)
            runs[backend] = data_dir
        queries = _queries(qrels)
        pdfs = sorted(str(p.resolve()) for p in folder.rglob("*.pdf"))[:1]
        results = {
            backend: _search_all(data_dir, queries, args.k, pdfs) for backend, data_dir in runs.items()
        }
        assert results["milvus"]["backend"] == "milvus", "the Milvus run did not follow its recorded setup"
        compared = _compare(results["faiss"]["tops"], results["milvus"]["tops"])
        compared["filtered"] = {backend: r["filtered"] for backend, r in results.items()}
        report[name] = compared
        print(
            f"  top-{args.k} of {compared['queries']} queries: {compared['same']} identical, "
            f"{compared['ties_only']} differ only among tied scores, {compared['different']} differ; "
            f"filtered (a PDF's text chunks): {compared['filtered']}",
            flush=True,
        )
    (args.work / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.work / 'compare.json'}")
    return 0 if all(r["different"] == 0 for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
