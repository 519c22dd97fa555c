"""`python -m bench.answers`: how often the offline profile's answers pass mmrag's quality gate.

For each evaluation set (photos, and the gnuplot manual when gnuplot-doc is installed) the set is written,
indexed once with the offline profile (configs/offline.yaml: MiniLM, EfficientNet-Lite0 labels, RapidOCR,
SmolLM2-135M answering), and its first N qrels queries are asked as questions ("Which photo shows a cat?",
"What does the gnuplot manual say about Copyright?"). Each answer is counted as passed by the gate, or
failed by each check (an answer can fail several), and whether the extractive fallback replaced it. The
qrels also say whether the sources an answer cites include a relevant one.

    OMP_NUM_THREADS=1 python -m bench.answers --threads 1          # both sets, 25 questions each
    python -m bench.answers --sets photos --questions 5 --work /tmp/answers   # keep the indexes for reruns

Writes bench/results/answers.json: the counts, and per question the model's reply, the answer shown, the
failed checks and their reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parent.parent
OFFLINE_CONFIG = REPO_ROOT / "configs" / "offline.yaml"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETS = ("photos", "gnuplot")
CHECKS = ("no_content", "prompt_echo", "repetition", "unsupported", "invented_code", "miscited", "uncited")

console = Console(soft_wrap=True, width=160)


@dataclass(frozen=True)
class EvalSet:
    name: str
    question: str  # how a qrels query becomes a question: {q} is the query
    build: Callable[[Path], Path]  # writes the set under a folder, returns the qrels path


def eval_sets(pdf: Path) -> dict[str, EvalSet]:
    from mmrag.evaluation.datasets import build_pdf_sections_set, build_photo_set

    return {
        "photos": EvalSet("photos", "Which photo shows {q}?", build_photo_set),
        "gnuplot": EvalSet(
            "gnuplot",
            "What does the gnuplot manual say about {q}?",
            lambda folder: build_pdf_sections_set(folder, pdf=pdf),
        ),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from mmrag.evaluation.datasets import GNUPLOT_PDF

    parser = argparse.ArgumentParser(prog="python -m bench.answers", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    add("--questions", type=int, default=25, help="questions per set (the qrels' first N queries)")
    add("--config", type=Path, default=OFFLINE_CONFIG, help="settings file (default: the offline profile)")
    add("--pdf", type=Path, default=GNUPLOT_PDF, help="PDF with an outline for the gnuplot set")
    add("--work", type=Path, default=None, help="where sets and indexes go; kept, and reused when rerun")
    add("--out", type=Path, default=RESULTS_DIR / "answers.json", help="the JSON report")
    add("--threads", type=int, default=None, help="torch threads (1 steadies a shared machine)")
    add(
        "--question",
        default=None,
        help="how a query becomes a question, e.g. 'What is {q}?' (default: per set)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.sets.split(",")) - set(SETS)
    if unknown:
        parser.error(f"unknown set(s) {sorted(unknown)}; choose from {', '.join(SETS)}")
    if args.questions < 1:
        parser.error("--questions must be at least 1")
    if args.question is not None and "{q}" not in args.question:
        parser.error("--question must hold {q}, where the query goes")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here ships in packages
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="mmrag-answers-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(args.config),
        "questions_per_set": args.questions,
        "sets": {},
    }
    try:
        for name in args.sets.split(","):
            spec = eval_sets(args.pdf)[name]
            if args.question:
                spec = EvalSet(spec.name, args.question, spec.build)
            if name == "gnuplot" and not args.pdf.is_file():
                report["sets"][name] = {"skipped": f"{args.pdf} not found (apt-get install gnuplot-doc)"}
                console.print(f"[yellow]skipped {name}[/]: {report['sets'][name]['skipped']}")
                continue
            report["sets"][name] = run_set(spec, work / name, args.config, args.questions)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_summary(report)
    console.print(f"wrote {args.out} in {report['wall_s']:.0f} s")
    return 0


def run_set(spec: EvalSet, folder: Path, config: Path, questions: int) -> dict[str, Any]:
    from mmrag.evaluation.qrels import load_qrels
    from mmrag.generate.answer import Answerer
    from mmrag.ingest.pipeline import Indexer
    from mmrag.runtime import open_runtime
    from mmrag.settings import load_settings

    library = folder / "library"
    qrels_path = next(library.glob("qrels-*.jsonl"), None) if library.is_dir() else None
    if qrels_path is None:
        qrels_path = spec.build(library)
    settings = load_settings(config, data_dir=folder / "data")
    rt = open_runtime(settings)
    try:
        console.print(f"[bold]{spec.name}[/]: indexing {library} (unchanged files are skipped)")
        indexed = Indexer(rt.settings, rt.collection, rt.vectoriser()).run([library])
        if indexed.failed:
            console.print(f"[yellow]{len(indexed.failed)} files failed to index[/]")
        answerer = Answerer.from_runtime(rt)
        records = []
        for query in load_qrels(qrels_path)[:questions]:
            question = spec.question.format(q=query.text)
            started = time.perf_counter()
            answer = answerer.answer(question)
            seconds = time.perf_counter() - started
            records.append(record_of(answer, query, seconds))
            outcome = "passed" if records[-1]["passed"] else "failed " + ",".join(records[-1]["failed"])
            console.print(f"  {seconds:5.1f} s  {outcome:<40} {question}", markup=False, highlight=False)
    finally:
        rt.close()
    return {"question": spec.question, "summary": summarise(records), "answers": records}


def record_of(answer: Any, query: Any, seconds: float) -> dict[str, Any]:
    """One question's outcome: what the model said, what was shown, which checks failed."""
    relevant = any(query.match(s.path, s.page) is not None for s in answer.used_sources)
    return {
        "id": query.id,
        "question": answer.question,
        "seconds": round(seconds, 2),
        "error": answer.error,
        "passed": answer.error is None and not answer.quality_issues,
        "failed": [issue.check for issue in answer.quality_issues],
        "reasons": [issue.reason for issue in answer.quality_issues],
        "fallback": answer.fallback,
        "model_answer": answer.rejected_answer if answer.fallback else answer.text,
        "shown": answer.text,
        "cited": answer.cited,
        "citations_added": answer.citations_added,
        "cites_relevant": relevant,
    }


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts over a set's answers: passed, failed by each check, fallback used, relevant sources cited."""
    failed = Counter(check for r in records for check in r["failed"])
    passed = [r for r in records if r["passed"]]
    fallback = [r for r in records if r["fallback"]]
    seconds = sorted(r["seconds"] for r in records)
    return {
        "questions": len(records),
        "errors": sum(1 for r in records if r["error"]),
        "passed": len(passed),
        "failed": sum(1 for r in records if r["failed"]),
        "failed_by_check": {check: failed.get(check, 0) for check in CHECKS},
        "fallback": len(fallback),
        "citations_added": sum(1 for r in passed if r["citations_added"]),
        "passed_cites_relevant": sum(1 for r in passed if r["cites_relevant"]),
        "fallback_cites_relevant": sum(1 for r in fallback if r["cites_relevant"]),
        "median_s": seconds[len(seconds) // 2] if seconds else None,
    }


def print_summary(report: dict[str, Any]) -> None:
    table = Table(title=f"Answers through the quality gate ({Path(report['config']).name})")
    columns = ["set", "questions", "passed", *CHECKS, "fallback", "relevant cited (passed / fallback)", "s"]
    for column in columns:
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, result in report["sets"].items():
        if "skipped" in result:
            table.add_row(name, "skipped", *[""] * (len(columns) - 2))
            continue
        s = result["summary"]
        table.add_row(
            name,
            str(s["questions"]),
            str(s["passed"]),
            *(str(s["failed_by_check"][check]) for check in CHECKS),
            str(s["fallback"]),
            f"{s['passed_cites_relevant']}/{s['passed']} · {s['fallback_cites_relevant']}/{s['fallback']}",
            f"{s['median_s']:.1f}" if s["median_s"] is not None else "",
        )
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
