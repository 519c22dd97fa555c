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

from bench.ann import nearest_neighbour_distance, recall_at_k, tile_with_noise
from bench.plot import plot_results
from bench.query import ITEMS_PER_DOCUMENT, fill_database, query_texts, random_unit_vectors
from bench.run import parse_args
from bench.threads import default_counts
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
    assert full.ann_sizes == [100_000, 1_000_000] and full.rounds == 3 and full.threads == 0
    quick = parse_args(["--quick", "--pdf-pages", "3-5", "--sizes", "1000"])
    assert quick.sizes == [1000] and quick.queries == 5 and quick.pdf_pages == (3, 5)
    assert quick.ann_sizes == [2000, 5000] and quick.rounds == 1
    assert parse_args(["--gpu", "--threads", "4"]).gpu is True
    with pytest.raises(SystemExit):
        parse_args(["--steps", "query,gpu"])
    assert "unknown step" in capsys.readouterr().err


def test_tiling_keeps_the_originals_and_puts_each_copy_near_its_source() -> None:
    base = random_unit_vectors(50, 16, seed=1)
    tiled = tile_with_noise(base, 1000, noise=0.3, seed=2)
    assert tiled.shape == (1000, 16) and tiled.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tiled, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiled[:50], base, atol=1e-6)
    similarity = tiled[50:] @ base.T  # each copy's closest original is the one it was made from
    np.testing.assert_array_equal(similarity.argmax(axis=1), np.arange(50, 1000) % 50)
    assert 0.9 < float(np.mean(similarity.max(axis=1))) < 0.99  # noise of length 0.3: cosine ~0.96
    np.testing.assert_array_equal(tiled, tile_with_noise(base, 1000, noise=0.3, seed=2))


def test_nearest_neighbour_distance_and_recall() -> None:
    pairs = np.repeat(random_unit_vectors(20, 8, seed=3), 2, axis=0)  # every vector has a twin
    assert nearest_neighbour_distance(pairs) == pytest.approx(0.0, abs=1e-3)
    spread = np.eye(8, dtype=np.float32)  # orthogonal: nearest other vector at sqrt(2)
    assert nearest_neighbour_distance(spread) == pytest.approx(2**0.5, abs=1e-4)
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])  # order does not matter; -1 is a missing hit
    assert recall_at_k(found, exact, k=4) == pytest.approx((2 + 4) / 8)


def test_thread_counts_double_up_to_the_cores() -> None:
    assert default_counts(1) == [1] and default_counts(2) == [1, 2]
    assert default_counts(16) == [1, 2, 4, 8, 16] and default_counts(12) == [1, 2, 4, 8, 12]


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
    assert (
        "mmrag stats" in run.stdout and "mmrag query (first" not in run.stdout
    )  # --quick loads no model there

    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["machine"]["logical_cpus"] >= 1
    startup = results["startup"]
    assert set(startup["seconds"]) == {"help", "stats", "index_no_change"} and startup["runs"] == 1
    assert all(seconds > 0 for seconds in startup["seconds"].values())
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
    first = rows[(2000, "flat")]  # the token trim's before and after, timed query by query in turn
    assert first["text_tokens"] == "real" and first["padded_77_tokens"]["encode"]["p50_ms"] > 0
    assert "padded_77_tokens" not in rows[(5000, "flat")]
    assert "token trim at 2,000 items" in run.stdout

    ann = results["ann"]
    assert ann["corpus"]["chunks"] >= 3 and ann["corpus"]["dim"] == 384  # the PDF's own MiniLM vectors
    layouts = {(row["items"], row["layout"][:3]) for row in ann["rows"]}
    assert layouts == {(2000, "ivf"), (2000, "hns"), (5000, "ivf"), (5000, "hns")}
    for row in ann["rows"]:
        assert 0.0 <= row["recall_at_k"] <= 1.0 and row["build_s"] > 0
        assert row["search"]["p50_ms"] > 0 and row["exact_search"]["p50_ms"] > 0
    assert [row["threads"] for row in results["threads"]["rows"]] == [1, 2]

    stores = {row["backend"]: row for row in results["stores"]}
    assert set(stores) == {"faiss", "milvus"} and all(row["items"] == 2000 for row in stores.values())
    for row in stores.values():
        assert row["insert_items_per_s"] > 0 and row["query"]["selective"]["p99_ms"] > 0
        # 10 documents (100 items) and one folder of 100 (20 items at 2000): the filters are pushed into the
        # search, so every item that matches comes back, up to the depth of 30
        assert row["mean_hits"] == {"none": 30, "selective": 30, "broad": 20}
    assert stores["faiss"]["recall_at_10"] == 1.0 and stores["milvus"]["recall_at_10"] > 0.9
    assert "Vector stores" in run.stdout
    with Image.open(out / "bench.png") as image:
        assert image.format == "PNG"


@pytest.mark.slow
def test_gpu_run_has_a_quick_cpu_path_through_the_same_code(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--gpu", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())["gpu"]
    assert result["device"] == "cpu"
    clip = result["clip"]
    assert clip["images"] == 8 and clip["tensor_preprocessing"] is True
    assert set(clip["images_per_s"]) == {"pipeline", "bare_forward", "prepare_only", "old_pil_path"}
    assert clip["pipeline_vs_bare_forward"] == pytest.approx(
        clip["images_per_s"]["pipeline"] / clip["images_per_s"]["bare_forward"]
    )
    layouts = [(row["layout"][:3], row["device"]) for row in result["faiss"]["rows"]]
    assert layouts == [("fla", "cpu"), ("fla", "cpu"), ("ivf", "cpu"), ("ivf", "cpu")]
    assert "GPU run on cpu" in run.stdout and "FAISS at 5,000 x 512" in run.stdout


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
