"""`python -m bench`: run mmrag's benchmark on this machine, print the ratios, write JSON and a PNG.

Every number comes with its floor, measured in the same run on the same input, so the ratio means the
same on a laptop and on a server even when the absolute numbers do not:

- ingest: images/s of `mmrag index` against the bare model forward (CLIP ViT-B-32; the offline profile's
  EfficientNet-Lite0 + RapidOCR + MiniLM); PDF pages/s against bare PyMuPDF text extraction;
- query: p50/p99 of `Retriever.search` against query encoding + FAISS search, at each collection size and
  index layout (flat, IVF), with index build time and bytes per item; at the first size also with the
  text tower run padded to 77 tokens (the floor and full search before the token trim);
- ann: IVF and HNSW build time, recall@10 against exact search and latency on real MiniLM embeddings of
  Debian's manuals tiled to 100k and 1M (bench/ann.py);
- threads: CLIP query, CLIP image batch and FAISS search at 1, 2, ... threads (bench/threads.py);
- stores: FAISS and Milvus Lite side by side through mmrag's vector-store interface: insert rate, query
  p50/p99 without a filter and with a selective and a broad one (pushed down), recall@10, memory per item.

The PDF step also scores the PDF's outline queries (docs/evaluation.md) on the collection it built.
`--quick` runs every step at toy sizes (a smoke test, not a measurement). `--gpu` runs the CUDA checks
instead (bench/gpu.py); `--gpu --quick` runs their code on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
STEPS = ("startup", "clip", "offline", "pdf", "runners", "query", "stores", "ann", "threads")
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000)
ANN_SIZES = (100_000, 1_000_000)
QUICK_ANN_SIZES = (2_000, 5_000)

console = Console(soft_wrap=True, width=240)  # the tables are wide; a log file is not a terminal


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
    add("--ivf-max-items", type=int, default=1_000_000, help="query step: IVF only up to this size")
    add("--ann-sizes", default=None, help="sizes for the ann step (default 100000,1000000)")
    add("--hnsw-max-items", type=int, default=100_000, help="ann step: HNSW only up to this size")
    add("--rounds", type=int, default=None, help="interleaved rounds of the CLIP ingest step (default 3)")
    add("--store-sizes", default=None, help="sizes for the stores step (default 100000)")
    add(
        "--milvus-index",
        default="AUTOINDEX",
        help="Milvus index type for the stores step (default AUTOINDEX)",
    )
    add(
        "--gpu",
        action="store_true",
        help="the CUDA checks: CLIP fp16 with GPU preprocessing, FAISS GPU at 1M",
    )
    add(
        "--threads",
        type=int,
        default=0,
        help="torch, FAISS and ONNX Runtime threads, as `mmrag --threads` (default 0: mmrag's auto)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.steps.split(",")) - set(STEPS)
    if unknown:
        parser.error(f"unknown step(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    quick = args.quick
    default_sizes = QUICK_SIZES if quick else FULL_SIZES
    args.sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(default_sizes)
    default_store_sizes = "2000" if quick else "100000"
    args.store_sizes = [int(s) for s in (args.store_sizes or default_store_sizes).split(",")]
    default_ann = QUICK_ANN_SIZES if quick else ANN_SIZES
    args.ann_sizes = [int(s) for s in args.ann_sizes.split(",")] if args.ann_sizes else list(default_ann)
    args.rounds = args.rounds or (1 if quick else 3)
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

    from mmrag.threads import apply_threads

    # What `mmrag` itself does, before torch or FAISS load: the numbers are those users get.
    args.threads_applied = apply_threads(args.threads)

    from bench import ingest, query
    from bench.common import machine_info
    from bench.plot import plot_results

    steps = [] if args.gpu else args.steps.split(",")
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
            "store_sizes": args.store_sizes,
            "milvus_index": args.milvus_index,
            "ann_sizes": args.ann_sizes,
            "hnsw_max_items": args.hnsw_max_items,
            "rounds": args.rounds,
            "threads": args.threads,
            "workers": args.workers,
            "threads_applied": args.threads_applied,
            "gpu": args.gpu,
        },
        "ingest": {},
        "runners": {},
        "query": [],
        "stores": [],
    }
    try:
        if "startup" in steps:
            from bench.startup import run_startup

            _step(
                "start-up: --help, stats, no-change index, first query (not with --quick)",
                lambda: run_startup(
                    work / "startup", runs=1 if args.quick else 5, first_query=not args.quick
                ),
                results,
                "startup",
            )
        if "clip" in steps:
            _step(
                "ingest: CLIP road images",
                lambda: ingest.bench_clip_images(work / "clip", args.images, rounds=args.rounds),
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
        if "stores" in steps:
            from bench import stores

            console.print(f"[bold]stores[/]: FAISS and Milvus Lite at {args.store_sizes} items")
            results["stores"] = stores.bench_stores(
                work / "stores", args.store_sizes, args.queries, milvus_index=args.milvus_index
            )
        if "ann" in steps:
            _step("ann: IVF and HNSW on real clustered embeddings", lambda: _ann(args, work), results, "ann")
        if "threads" in steps:
            from bench.threads import bench_threads, default_counts
            from mmrag.threads import usable_cores

            counts = [1, 2] if args.quick else default_counts(usable_cores())
            _step(
                "threads",
                lambda: bench_threads(
                    counts,
                    queries=3 if args.quick else 20,
                    images=4 if args.quick else 32,
                    items=2_000 if args.quick else 100_000,
                ),
                results,
                "threads",
            )
        if args.gpu:
            from bench.gpu import bench_gpu

            _step(
                "gpu: CLIP fp16 + GPU preprocessing, FAISS GPU",
                lambda: bench_gpu(work, args.quick),
                results,
                "gpu",
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


def _ann(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from bench.ann import bench_ann, embedded_corpus

    # --quick embeds the given PDF alone (seconds), not the manuals (minutes on first use, then cached).
    corpus = embedded_corpus([args.pdf], cache=work / "ann-cache") if args.quick else None
    return bench_ann(
        args.ann_sizes,
        n_queries=20 if args.quick else 1000,
        hnsw_max_items=args.hnsw_max_items,
        corpus=corpus,
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
    if results.get("startup"):
        from bench.startup import print_startup

        print_startup(results["startup"])
    if results["ingest"]:
        print_ingest(results["ingest"])
    if results.get("runners"):
        print_runners(results["runners"])
    if results["query"]:
        print_query(results["query"])
    if results.get("ann"):
        print_ann(results["ann"])
    if results.get("threads"):
        print_threads(results["threads"])
    if results.get("gpu"):
        print_gpu(results["gpu"])
    if results.get("stores"):
        print_stores(results["stores"])


def print_stores(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Vector stores through mmrag's interface (random 512-d unit vectors, depth 30)")
    for column in (
        "items", "backend", "index", "insert items/s", "ready", "p50 / p99 no filter",
        "p50 / p99 selective", "p50 / p99 broad", "recall@10", "RSS B/item", "disk B/item",
    ):  # fmt: skip
        table.add_column(column)
    for row in rows:
        q = row["query"]
        table.add_row(
            f"{row['items']:,}",
            row["backend"],
            row["index"].split(" (")[0],
            f"{row['insert_items_per_s']:,.0f}",
            f"{row['ready_s']:.1f} s",
            *(f"{q[n]['p50_ms']:.1f} / {q[n]['p99_ms']:.1f} ms" for n in ("none", "selective", "broad")),
            f"{row['recall_at_10']:.3f}",
            f"{row['rss_bytes_per_item']:,.0f}",
            f"{row['disk_bytes_per_item']:,.0f}",
        )
    console.print(table)


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
    clip = steps.get("clip_images", {})
    if "round_pipeline_vs_bare_forward" in clip:
        rounds = ", ".join(f"{ratio:.2f}" for ratio in clip["round_pipeline_vs_bare_forward"])
        console.print(
            f"CLIP road, {clip['torch_threads']} torch thread(s): pipeline / bare forward per round "
            f"{rounds}; in CPU seconds (the work, whatever else runs on the machine) "
            f"{clip['pipeline_vs_bare_forward_cpu']:.3f}"
        )
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
        if math.isnan(rate):  # too few images to measure it (--quick)
            table.add_row(name.replace("_", " "), "n/a", "n/a")
            continue
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
    for row in rows:
        before = row.get("padded_77_tokens")
        if before:
            console.print(
                f"token trim at {row['items']:,} items, {row['layout']}: encode p50 "
                f"{before['encode']['p50_ms']:.1f} -> {row['encode']['p50_ms']:.1f} ms, floor p50 "
                f"{before['floor']['p50_ms']:.1f} -> {row['floor']['p50_ms']:.1f} ms, full p50 "
                f"{before['full']['p50_ms']:.1f} -> {row['full']['p50_ms']:.1f} ms "
                "(padded to 77 tokens -> real tokens)"
            )


def print_ann(result: dict[str, Any]) -> None:
    corpus = result["corpus"]
    table = Table(
        title=f"Approximate search: {corpus['chunks']:,} real MiniLM chunk vectors tiled with noise "
        f"{corpus['noise']:.2f}; {corpus['queries']} outline-title queries; recall@{result['k']} vs exact"
    )
    for column in ("items", "layout", "build s", "recall@10", "p50 ms", "exact p50 ms", "search knob sweep"):
        table.add_column(column, justify="left" if column in ("layout", "search knob sweep") else "right")
    for row in result["rows"]:
        if "skipped" in row:
            table.add_row(f"{row['items']:,}", row["layout"], row["skipped"], "", "", "", "")
            continue
        sweep = row.get("recall_by_nprobe") or row.get("recall_by_ef_search") or {}
        knob = "nprobe" if "recall_by_nprobe" in row else "efSearch"
        setting = f"nprobe {row['nprobe']}, " if "nprobe" in row else f"efSearch {row.get('ef_search')}, "
        table.add_row(
            f"{row['items']:,}",
            f"{row['layout']} ({setting.rstrip(', ')})",
            f"{row['build_s']:.1f}",
            f"{row['recall_at_k']:.3f}",
            f"{row['search']['p50_ms']:.2f}",
            f"{row['exact_search']['p50_ms']:.2f}",
            f"{knob}: " + ", ".join(f"{value}->{recall:.3f}" for value, recall in sweep.items()),
        )
    console.print(table)


def print_threads(result: dict[str, Any]) -> None:
    from bench.threads import summarise

    table = Table(title="Threads: torch and FAISS at each count (medians of interleaved rounds)")
    for column in ("threads", "CLIP query p50 ms", "CLIP images/s (batch 32)", "FAISS flat p50 ms"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        table.add_row(
            str(row["threads"]),
            f"{row['clip_query_p50_ms']:.1f}",
            f"{row['clip_images_per_s']:.1f}",
            f"{row['faiss_flat_p50_ms']:.2f}",
        )
    console.print(table)
    for line in summarise(result):
        console.print(f"  {line}")


def print_gpu(result: dict[str, Any]) -> None:
    clip = result["clip"]
    rates = clip["images_per_s"]
    console.print(
        f"[bold]GPU run on {result['device']}[/]: CLIP ViT-B-32 {clip['precision']}, "
        f"batch {clip['batch_size']}, {clip['preprocess_workers']} preparing threads: "
        f"encode_images {rates['pipeline']:,.0f} img/s vs bare "
        f"forward {rates['bare_forward']:,.0f} ({clip['pipeline_vs_bare_forward']:.2f}x); preparation alone "
        f"{rates['prepare_only']:,.0f} img/s; old PIL path {rates['old_pil_path']:,.0f} img/s"
    )
    table = Table(
        title=f"FAISS at {result['faiss']['items']:,} x {result['faiss']['dim']}: VectorIndex.search"
    )
    for column in ("layout", "device", "build s", "first search s", "p50 ms", "p99 ms", "batch of 256 q/s"):
        table.add_column(column, justify="right")
    bare = result["faiss"].get("bare_gpu_flat")
    rows = result["faiss"]["rows"] + (
        [{"layout": "bare GpuIndexFlatIP", "device": "gpu", **bare}] if bare else []
    )
    for row in rows:
        table.add_row(
            row["layout"],
            row["device"],
            f"{row['build_s']:.1f}" if "build_s" in row else "",
            f"{row['first_search_s']:.2f}" if "first_search_s" in row else "",
            f"{row['one_at_a_time']['p50_ms']:.2f}",
            f"{row['one_at_a_time']['p99_ms']:.2f}",
            f"{row['batch_256_queries_per_s']:,.0f}",
        )
    console.print(table)
    print_threads(result["threads"])


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
