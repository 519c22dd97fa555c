"""`python -m bench`: run mmrag's benchmark on this machine, print the ratios, write JSON and a PNG.

Every number comes with its floor, measured in the same run on the same input, so the ratio means the
same on a laptop and on a server even when the absolute numbers do not:

- ingest: images/s of `mmrag index` against the bare model forward (CLIP ViT-B-32; the offline profile's
  EfficientNet-Lite0 + RapidOCR + MiniLM); PDF pages/s against bare PyMuPDF text extraction;
- query: p50/p99 of `Retriever.search` against query encoding + FAISS search, at each collection size and
  index layout (flat, IVF), with index build time and bytes per item.

The PDF step also scores the PDF's outline queries (docs/evaluation.md) on the collection it built.
`--quick` runs every step at toy sizes (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEPS = ("clip", "offline", "pdf", "runners", "query")
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000)

console = Console(soft_wrap=True, width=160)  # the tables are wide; a log file is not a terminal


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from mmrag.evaluation.datasets import GNUPLOT_PDF

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="toy sizes: checks that the bench runs, measures nothing")
    add("--out", type=Path, default=RESULTS_DIR, help="where results.json and bench.png go")
    add("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed after)")
    add("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    add("--sizes", default=None, help="collection sizes for the query step, e.g. 10000,100000")
    add("--queries", type=int, default=None, help="queries per size and layout (default 100)")
    add("--images", type=int, default=None, help="images for the CLIP step (default 128)")
    add("--offline-images", type=int, default=None, help="images for the offline step (default 32)")
    add("--pdf", type=Path, default=GNUPLOT_PDF, help="PDF with an outline (default: gnuplot-doc's manual)")
    add("--pdf-pages", default=None, help="only these pages of the PDF, e.g. 21-60")
    add("--workers", default=None, help="Ray model workers for the runners step (default 1,2)")
    add("--ivf-max-items", type=int, default=100_000, help="build IVF only up to this size (default 100000)")
    add(
        "--threads",
        type=int,
        default=None,
        help="torch and FAISS threads (default: theirs, one per core); 1 steadies numbers on a busy machine",
    )
    args = parser.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    quick = args.quick
    default_sizes = QUICK_SIZES if quick else FULL_SIZES
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(default_sizes)
    args.queries = args.queries or (5 if quick else 100)
    args.images = args.images or (4 if quick else 128)
    args.offline_images = args.offline_images or (2 if quick else 32)
    args.workers = tuple(int(w) for w in (args.workers or ("1" if quick else "1,2")).split(","))
    if args.pdf_pages:
        first, _, last = args.pdf_pages.partition("-")
        args.pdf_pages = (int(first), int(last or first))
    elif quick:
        args.pdf_pages = (21, 23)
    return args


def main(argv: list[str] | None = None) -> int:
    # Everything the bench loads ships in packages; a model hub must never be asked.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    from bench import ingest, query
    from bench.common import machine_info
    from bench.plot import plot_results

    if args.threads:
        import faiss
        import torch

        # With other jobs on the cores, torch's worker threads wait on each other: on a loaded 2-core
        # machine one thread encoded a CLIP query 5x faster than two.
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    steps = args.steps.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="mmrag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "started": _now(),
        # Other work on the machine slows every layer alike, which ratios absorb and absolute numbers do not.
        "load_average_at_start": _load_average(),
        "quick": args.quick,
        "settings": {
            "steps": steps,
            "sizes": args.sizes,
            "queries": args.queries,
            "images": args.images,
            "offline_images": args.offline_images,
            "pdf": str(args.pdf),
            "pdf_pages": args.pdf_pages,
            "ivf_max_items": args.ivf_max_items,
            "threads": args.threads,
            "workers": args.workers,
        },
        "ingest": {},
        "runners": {},
        "query": [],
    }
    try:
        if "clip" in steps:
            _step(
                "ingest: CLIP road images",
                lambda: ingest.bench_clip_images(work / "clip", args.images),
                results["ingest"],
                "clip_images",
            )
        if "offline" in steps:
            _step(
                "ingest: offline profile images",
                lambda: ingest.bench_offline_images(work / "offline", args.offline_images),
                results["ingest"],
                "offline_images",
            )
        if "pdf" in steps:
            if args.pdf.is_file():
                _step(
                    "ingest: PDF pages",
                    lambda: ingest.bench_pdf(work / "pdf", args.pdf, args.pdf_pages),
                    results["ingest"],
                    "pdf_pages",
                )
            else:
                results["ingest"]["pdf_pages"] = {
                    "skipped": f"{args.pdf} not found (Debian: apt-get install gnuplot-doc; or pass --pdf)"
                }
        if "runners" in steps:
            _runners_step(results, work, args)
        if "query" in steps:
            console.print(f"[bold]query[/]: sizes {args.sizes}, {args.queries} queries each")
            results["query"] = query.bench_queries(
                work / "query", args.sizes, args.queries, ivf_max_items=args.ivf_max_items
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["finished"] = _now()
    results["load_average_at_end"] = _load_average()
    results["wall_s"] = time.perf_counter() - started

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    png_path = plot_results(results, args.out / "bench.png")
    print_summary(results)
    console.print(f"wrote {json_path} and {png_path} in {results['wall_s']:.0f} s")
    return 0


def _runners_step(results: dict[str, Any], work: Path, args: argparse.Namespace) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        results["runners"] = {"skipped": "the Ray runner needs Ray: pip install 'mmrag[ray]'"}
        return
    from bench import runners

    _step(
        "ingest: local runner vs Ray runner",
        lambda: runners.bench_runners(work / "runners", args.images, workers=args.workers),
        results,
        "runners",
    )


def _step(title: str, run: Any, into: dict[str, Any], key: str) -> None:
    console.print(f"[bold]{title}[/] ...")
    into[key], seconds = _timed(run)
    console.print(f"  done in {seconds:.0f} s")


def _timed(run: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def print_summary(results: dict[str, Any]) -> None:
    machine = results["machine"]
    console.print(
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {machine['memory_gib']} GiB, "
        f"GPU: {machine['gpu'] or 'none'}; torch threads {machine['torch_threads']}; load average "
        f"{results.get('load_average_at_start')} at start, {results.get('load_average_at_end')} at end"
    )
    if results["ingest"]:
        print_ingest(results["ingest"])
    if results.get("runners"):
        print_runners(results["runners"])
    if results["query"]:
        print_query(results["query"])


def print_ingest(steps: dict[str, Any]) -> None:
    ingest = Table(title="Ingest: pipeline vs floor (same input, same run)")
    for column in ("step", "unit", "pipeline /s", "floor", "floor /s", "pipeline / floor", "other layers /s"):
        ingest.add_column(column, justify="left" if column in ("step", "unit", "floor") else "right")
    floors = {"clip_images": "bare_forward", "offline_images": "bare_forward", "pdf_pages": "bare_pymupdf"}
    for step, result in steps.items():
        if "skipped" in result:
            ingest.add_row(step, "", "", result["skipped"], "", "", "")
            continue
        rates = result[f"{result['unit']}_per_s"]
        floor = floors[step]
        others = ", ".join(
            f"{name} {rate:,.1f}" for name, rate in rates.items() if name not in ("pipeline", floor)
        )
        ingest.add_row(
            step,
            result["unit"],
            f"{rates['pipeline']:,.2f}",
            floor,
            f"{rates[floor]:,.2f}",
            f"{result['pipeline_vs'][floor]:.3f}",
            others,
        )
    console.print(ingest)
    pdf = steps.get("pdf_pages", {})
    if "sections_eval" in pdf:
        scores = pdf["sections_eval"]
        metrics = [f"R@{k} {scores[f'recall@{k}']:.2f}" for k in (1, 5, 10)]
        metrics += [f"MRR {scores['mrr']:.3f}", f"nDCG@10 {scores['ndcg@10']:.3f}"]
        console.print(f"PDF outline queries ({scores['queries']}): " + "  ".join(metrics))


def print_runners(result: dict[str, Any]) -> None:
    if "skipped" in result:
        console.print(f"runners: skipped ({result['skipped']})")
        return
    table = Table(title=f"Runners: {result['count']} images, CLIP road, {result['cores']} cores (same run)")
    for column in ("runner", "images/s", "vs local"):
        table.add_column(column, justify="left" if column == "runner" else "right")
    local = result["images_per_s"]["local"]
    for name, rate in result["images_per_s"].items():
        table.add_row(name.replace("_", " "), f"{rate:,.2f}", f"{rate / local:.2f}")
    stages = result["stage_rates"]
    table.caption = (
        f"stage rates: extract {stages['extract_files_per_s_one_thread']:,.1f} files/s per thread, "
        f"CLIP {stages['clip_forward_images_per_s_one_worker']:,.1f} images/s per worker "
        f"(its preprocessing alone {stages['clip_preprocess_images_per_s_one_thread']:,.1f} per thread), "
        f"commit {stages['commit_files_per_s']:,.1f} files/s"
    )
    console.print(table)


def print_query(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Query: Retriever.search (full) vs encode + FAISS search (floor), one at a time")
    for column in (
        "items",
        "layout",
        "build s",
        "B/item file",
        "B/item RSS",
        "floor p50",
        "floor p99",
        "full p50",
        "full p99",
        "full/floor p50",
        "full/floor p99",
        "dense p50",
        "full/dense p50",
        "lexical p50",
        "full q/s",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        if "skipped" in row:
            table.add_row(f"{row['items']:,}", row["layout"], "skipped", *([""] * 12))
            continue
        floor, full = row["floor"], row["full"]
        table.add_row(
            f"{row['items']:,}",
            row["layout"],
            f"{row['build_s']:.2f}",
            f"{row['index_file_bytes_per_item']:.0f}",
            f"{row['rss_bytes_per_item']:.0f}",
            *(f"{part[p]:.1f}" for part in (floor, full) for p in ("p50_ms", "p99_ms")),
            f"{row['full_vs_floor_p50']:.2f}",
            f"{row['full_vs_floor_p99']:.2f}",
            f"{row['dense']['p50_ms']:.1f}",
            f"{row['full_vs_dense_p50']:.2f}",
            f"{row['lexical_stage']['p50_ms']:.1f}",
            f"{full['qps']:.1f}",
        )
    table.caption = "latencies in ms; dense: the same search without the lexical list; lexical: its stage"
    console.print(table)


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
