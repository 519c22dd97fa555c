"""The benchmark's parts and its entry point at toy sizes. Nothing here asserts on time: the bench's numbers
depend on the machine; these tests check that it measures the right things and writes what it promises."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from bench.plot import plot_results
from bench.query import ITEMS_PER_DOCUMENT, fill_database, query_texts, random_unit_vectors
from bench.run import parse_args
from mmrag.collection import Collection
from mmrag.ingest.mupdf import pymupdf
from mmrag.settings import load_settings
from mmrag.store.db import Database

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_random_unit_vectors_are_unit_and_seeded() -> None:
    vectors = random_unit_vectors(250_001, 8, seed=3)  # crosses a generation chunk boundary
    assert vectors.dtype == np.float32 and vectors.shape == (250_001, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[:5], random_unit_vectors(5, 8, seed=3))
    assert not np.array_equal(vectors[:5], random_unit_vectors(5, 8, seed=4))


def test_fill_database_writes_rows_the_retriever_can_read(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path)
    db = Database(settings.db_url)
    try:
        fill_database(db, "bench", 23)
        collection = Collection(settings, db, [], name="bench")
        rows = collection.items_by_id([1, 10, 11, 23, 24])
        assert sorted(rows) == [1, 10, 11, 23]  # 24 was never written
        item, document = rows[11]
        assert (item.modality, item.page, document.id) == ("image", 1, 2)
        assert rows[10][1].id == 1 and ITEMS_PER_DOCUMENT == 10
        assert document.path == "/bench/library/doc-0000002.pdf"
        assert len(collection.documents()) == 3
    finally:
        db.close()


def test_query_texts_are_distinct_prompts() -> None:
    texts = query_texts(50)
    assert len(set(texts)) == 50 and all(t.startswith("a photo of a ") for t in texts)
    assert query_texts(50) == texts


def test_parse_args_defaults_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    full = parse_args([])
    assert full.sizes == [10_000, 100_000, 1_000_000] and full.queries == 100 and full.pdf_pages is None
    quick = parse_args(["--quick", "--pdf-pages", "3-5", "--sizes", "1000"])
    assert quick.sizes == [1000] and quick.queries == 5 and quick.pdf_pages == (3, 5)
    with pytest.raises(SystemExit):
        parse_args(["--steps", "query,gpu"])
    assert "unknown step" in capsys.readouterr().err


def _latency(p50: float) -> dict[str, float]:
    return {"p50_ms": p50, "p95_ms": p50 * 1.5, "p99_ms": p50 * 2, "mean_ms": p50, "qps": 1000 / p50}


def test_plot_draws_every_panel_from_results(tmp_path: Path) -> None:
    rows = [
        {
            "items": n,
            "layout": layout,
            "build_s": n / 1e5,
            "index_file_bytes_per_item": 2056.0,
            "full": _latency(20 + n / 1e4),
            "floor": _latency(18 + n / 1e4),
        }
        for n in (10_000, 100_000)
        for layout in ("flat", "ivf1265,flat")
    ]
    rows.append({"items": 1_000_000, "layout": "ivf", "skipped": "too slow here"})
    results = {
        "machine": {"cpu": "Test CPU", "logical_cpus": 2, "gpu": None},
        "finished": "2025-01-01T00:00:00+00:00",
        "query": rows,
        "ingest": {
            "clip_images": {"unit": "images", "images_per_s": {"pipeline": 10.0, "bare_forward": 12.0}},
            "pdf_pages": {"skipped": "no PDF"},
        },
    }
    path = plot_results(results, tmp_path / "out" / "bench.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 1000 and image.size[1] > 800


def _write_outlined_pdf(path: Path) -> Path:
    """Four pages of skimage.data docstrings (real prose), with an outline entry per page."""
    names = ("astronaut", "chelsea", "coffee", "rocket")
    doc = pymupdf.open()
    for name in names:
        text = inspect.getdoc(getattr(skimage.data, name))
        doc.new_page().insert_textbox(pymupdf.Rect(50, 50, 545, 800), text)
    doc.set_toc([[1, name.title(), page] for page, name in enumerate(names, start=1)])
    doc.save(path)
    doc.close()
    return path


@pytest.mark.slow
def test_bench_quick_runs_every_step_and_writes_json_and_png(tmp_path: Path) -> None:
    pdf = _write_outlined_pdf(tmp_path / "book.pdf")
    out = tmp_path / "results"
    command = ["--quick", "--pdf", str(pdf), "--pdf-pages", "1-3", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "bench", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "pipeline / floor" in run.stdout and "full/floor p50" in run.stdout

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["machine"]["logical_cpus"] >= 1
    ingest = results["ingest"]
    assert (ingest["clip_images"]["count"], ingest["offline_images"]["count"]) == (4, 2)
    for step, floor in (("clip_images", "bare_forward"), ("offline_images", "bare_forward")):
        rates = ingest[step]["images_per_s"]
        assert rates["pipeline"] > 0 and rates[floor] > 0
        assert ingest[step]["pipeline_vs"][floor] == pytest.approx(rates["pipeline"] / rates[floor])
    assert "embed_clip" in ingest["clip_images"]["pipeline_stage_seconds"]
    pdf_result = ingest["pdf_pages"]
    assert (pdf_result["pages"], pdf_result["unit"]) == (3, "pages") and pdf_result["chunks"] >= 3
    assert set(pdf_result["pages_per_s"]) == {"pipeline", "extract_pdf", "bare_pymupdf", "embed_only"}
    assert pdf_result["sections_eval"]["queries"] == 3  # Astronaut, Chelsea, Coffee start on pages 1-3

    family = {row["layout"]: row["layout"].partition(",")[0].rstrip("0123456789") for row in results["query"]}
    rows = {(row["items"], family[row["layout"]]): row for row in results["query"]}
    assert set(rows) == {(2000, "flat"), (2000, "ivf"), (5000, "flat"), (5000, "ivf")}
    for row in rows.values():
        assert row["queries"] == 5 and row["mean_hits_returned"] == 10  # every hit found its database row
        assert row["full"]["p50_ms"] > 0 and row["floor"]["p99_ms"] >= row["floor"]["p50_ms"]
        # 512 float32 per vector plus its 64-bit id, and a little IVF bookkeeping.
        assert 2048 + 8 <= row["index_file_bytes_per_item"] < 2300
    with Image.open(out / "bench.png") as image:
        assert image.format == "PNG"


def test_answers_bench_counts_each_check_and_whether_cited_sources_are_relevant(tmp_path: Path) -> None:
    from bench.answers import parse_args, record_of, summarise
    from mmrag.evaluation.qrels import load_qrels, write_qrels
    from mmrag.generate.answer import Answer, SourceRef
    from mmrag.generate.quality import FailedCheck

    qrels = write_qrels(
        tmp_path / "q.jsonl", [{"id": "cat", "text": "a cat", "relevant": [{"path": "cat.jpg"}]}]
    )
    [query] = load_qrels(qrels)
    cat = SourceRef(1, 7, str(tmp_path / "cat.jpg"), None, None, "image", 2.0, None, cited=True)
    cup = SourceRef(2, 8, str(tmp_path / "cup.jpg"), None, None, "image", 1.0, None)
    passed = Answer("Which photo shows a cat?", "A tabby cat [1].", "llm", [cat, cup], cited=[1])
    failed = Answer(
        "Which photo shows a cat?",
        "- a photo of a cup [2]",
        "llm",
        [
            SourceRef(1, 7, cat.path, None, None, "image", 2.0, None),
            SourceRef(**{**vars(cup), "cited": True}),
        ],
        cited=[2],
        quality_issues=[FailedCheck("repetition", "r"), FailedCheck("uncited", "u")],
        fallback="extractive",
        rejected_answer="The the the.",
    )
    records = [record_of(passed, query, 1.0), record_of(failed, query, 3.0)]
    assert records[1]["model_answer"] == "The the the." and records[1]["shown"] == "- a photo of a cup [2]"

    summary = summarise(records)
    assert (summary["questions"], summary["passed"], summary["failed"], summary["fallback"]) == (2, 1, 1, 1)
    failed = {check: count for check, count in summary["failed_by_check"].items() if count}
    assert failed == {"repetition": 1, "uncited": 1} and len(summary["failed_by_check"]) == 7
    assert (summary["passed_cites_relevant"], summary["fallback_cites_relevant"]) == (1, 0)
    with pytest.raises(SystemExit):
        parse_args(["--sets", "photos,digits"])
