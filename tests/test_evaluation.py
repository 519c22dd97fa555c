"""Retrieval evaluation: metrics against hand-computed values, the qrels format and its errors, path/page
matching, run_eval over fixed rankings, and the real-data set builders."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import skimage.data
from PIL import Image
from rich.console import Console
from sklearn.datasets import load_digits

from mmrag.errors import ConfigError, MmragError
from mmrag.evaluation import datasets, metrics
from mmrag.evaluation.datasets import (
    GNUPLOT_PDF,
    PDF_PAGES,
    PHOTO_NAMES,
    PHOTO_QUERIES,
    EvalSetError,
    build_digits_set,
    build_lfw_set,
    build_pdf_sections_set,
    build_photo_set,
    outline_sections,
)
from mmrag.evaluation.qrels import QrelsError, Query, load_qrels, write_qrels
from mmrag.evaluation.runner import hits_to_keys, render_report, retriever_search_fn, run_eval
from mmrag.ingest.mupdf import pymupdf
from tests.realdata import write_photos

INV_LOG2_3 = 1 / math.log2(3)  # discount at rank 2: 0.6309...


@dataclass
class RankedHit:
    """The two fields scoring reads from a retriever hit."""

    path: str
    page: int | None = None


# --- metrics -----------------------------------------------------------------------------------------


def test_first_relevant_rank_and_reciprocal_rank() -> None:
    assert metrics.first_relevant_rank(["x", "a", "b"], {"a", "b"}) == 2
    assert metrics.first_relevant_rank(["x", "y"], {"a"}) is None
    assert metrics.reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(["x", "y"], {"a"}) == 0.0


def test_recall_at_k_counts_queries_with_any_relevant_in_top_k() -> None:
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    relevant = [{"b", "c"}, {"z"}, {"missing"}]
    assert metrics.recall_at_k(rankings, relevant, 1) == 0.0
    assert metrics.recall_at_k(rankings, relevant, 2) == pytest.approx(1 / 3)
    # Query 1 has two relevant items in its top 3 and still counts once: success@k, not IR recall.
    assert metrics.recall_at_k(rankings, relevant, 3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(rankings, relevant, 100) == pytest.approx(2 / 3)


def test_mrr_hand_computed() -> None:
    rankings = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    relevant = [{"b", "c"}, {"z"}, {"missing"}]
    assert metrics.mrr(rankings, relevant) == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)


def test_ndcg_binary_hand_computed() -> None:
    # Relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); ideal puts them at ranks 1 and 2.
    expected = (INV_LOG2_3 + 1 / math.log2(5)) / (1 + INV_LOG2_3)
    assert expected == pytest.approx(0.650921, abs=1e-6)
    assert metrics.ndcg_at_k(["x", "a", "y", "b"], {"a", "b"}, 4) == pytest.approx(expected)
    assert metrics.ndcg_at_k(["a", "b", "x"], {"a", "b"}, 3) == pytest.approx(1.0)


def test_ndcg_graded_gains() -> None:
    grades = {"a": 3, "b": 1}
    worse_first = (1 + 3 * INV_LOG2_3) / (3 + INV_LOG2_3)
    assert worse_first == pytest.approx(0.796708, abs=1e-6)
    assert metrics.ndcg_at_k(["b", "a"], grades, 2) == pytest.approx(worse_first)
    assert metrics.ndcg_at_k(["a", "b"], grades, 2) == pytest.approx(1.0)
    # Only the top k counts, and the ideal is cut at k too: the best item first is perfect at k=1.
    assert metrics.ndcg_at_k(["a", "b"], grades, 1) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(["b", "a"], grades, 1) == pytest.approx(1 / 3)


def test_ndcg_counts_a_repeated_key_once_and_misses_lower_the_score() -> None:
    # Without de-duplication the second "a" would add 1/log2(3) and the score would pass 1.
    expected = (1 + 1 / math.log2(4)) / (1 + INV_LOG2_3)
    assert metrics.ndcg_at_k(["a", "a", "b"], {"a", "b"}, 3) == pytest.approx(expected)
    # One of two relevant items found at rank 1: the ideal still holds both.
    assert metrics.ndcg_at_k(["a"], {"a", "b"}, 10) == pytest.approx(1 / (1 + INV_LOG2_3))


def test_nothing_relevant_found_scores_zero() -> None:
    assert metrics.ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert metrics.ndcg_at_k([], {"a"}, 10) == 0.0
    assert metrics.mrr([["x"], []], [{"a"}, {"b"}]) == 0.0
    assert metrics.recall_at_k([["x"], []], [{"a"}, {"b"}], 10) == 0.0


def test_mean_ndcg_averages_queries() -> None:
    assert metrics.mean_ndcg_at_k([["a"], ["x"]], [{"a"}, {"a"}], 10) == pytest.approx(0.5)


def test_percentile_interpolates_linearly() -> None:
    latencies = [40.0, 10.0, 30.0, 20.0]
    assert metrics.percentile(latencies, 50) == pytest.approx(25.0)
    assert metrics.percentile(latencies, 95) == pytest.approx(38.5)  # position 2.85 of 0..3
    assert metrics.percentile(latencies, 0) == 10.0
    assert metrics.percentile(latencies, 100) == 40.0
    assert metrics.percentile([7.0], 95) == 7.0


def test_metric_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        metrics.ndcg_at_k(["a"], {"a"}, 0)
    with pytest.raises(ValueError, match="2 rankings but 1"):
        metrics.mrr([["a"], ["b"]], [{"a"}])
    with pytest.raises(ValueError, match="no queries"):
        metrics.recall_at_k([], [], 1)
    with pytest.raises(ValueError, match="grades > 0"):
        metrics.ndcg_at_k(["a"], {"a": 0}, 1)
    with pytest.raises(ValueError, match="no values"):
        metrics.percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        metrics.percentile([1.0], 101)


# --- qrels -------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: Sequence[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_load_qrels_reads_text_image_pages_and_grades(tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "photos", ["chelsea", "astronaut"])
    qrels = _write_lines(
        tmp_path / "qrels.jsonl",
        [
            {
                "id": "cat",
                "text": "a cat",
                "relevant": [
                    {"path": "photos/chelsea.jpg"},
                    {"path": "docs/report.pdf", "page": 3, "grade": 2},
                ],
            },
            "",  # blank lines are allowed
            {"id": "by-image", "image": "photos/astronaut.jpg", "relevant": [{"path": "notes.md"}]},
        ],
    )
    queries = load_qrels(qrels)
    assert [q.id for q in queries] == ["cat", "by-image"]
    cat, by_image = queries
    assert cat.text == "a cat" and cat.image is None and cat.line == 1
    assert cat.relevant[0].resolved == photos["chelsea"].resolve()
    assert cat.relevant[1].resolved is None  # not next to the qrels file: stays a suffix
    assert (cat.relevant[1].page, cat.relevant[1].grade) == (3, 2.0)
    assert (cat.relevant[0].page, cat.relevant[0].grade) == (None, 1.0)
    assert by_image.text is None and by_image.line == 3
    assert by_image.image == photos["astronaut"].resolve()


BAD_SECOND_LINES = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"text": "x", "relevant": [{"path": "a"}]}, "'id' must be a non-empty string"),
    ({"id": "q1", "text": "x", "relevant": [{"path": "a"}]}, "query id 'q1' already used on line 1"),
    ({"id": "q", "relevant": [{"path": "a"}]}, "needs 'text', 'image', or both"),
    ({"id": "q", "text": "  ", "relevant": [{"path": "a"}]}, "needs 'text', 'image', or both"),
    ({"id": "q", "text": 3, "relevant": [{"path": "a"}]}, "'text' must be a string"),
    ({"id": "q", "text": "x", "relevant": []}, "'relevant' must be a non-empty list"),
    ({"id": "q", "text": "x", "relevant": {"path": "a"}}, "'relevant' must be a non-empty list"),
    ({"id": "q", "text": "x", "relevant": ["a.jpg"]}, "relevant entry 1: expected an object"),
    ({"id": "q", "text": "x", "relevant": [{"page": 2}]}, "relevant entry 1: 'path' must be"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a", "page": 0}]}, "'page' must be an integer >= 1"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a", "page": "3"}]}, "'page' must be an integer >= 1"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a", "page": True}]}, "'page' must be an integer >= 1"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a", "grade": 0}]}, "'grade' must be a number > 0"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a", "pages": 2}]}, "unknown key(s) ['pages']"),
    ({"id": "q", "text": "x", "relevant": [{"path": "a"}], "k": 5}, "unknown key(s) ['k']"),
    ({"id": "q", "image": "nowhere.jpg", "relevant": [{"path": "a"}]}, "query image 'nowhere.jpg' not found"),
    (
        {"id": "q", "text": "x", "relevant": [{"path": "a.pdf"}, {"path": "./a.pdf"}]},
        "relevant entry 2 repeats entry 1",
    ),
]


@pytest.mark.parametrize(("second_line", "problem"), BAD_SECOND_LINES)
def test_qrels_errors_name_the_line_and_the_problem(
    tmp_path: Path, second_line: object, problem: str
) -> None:
    good = {"id": "q1", "text": "a cat", "relevant": [{"path": "photos/chelsea.jpg"}]}
    qrels = _write_lines(tmp_path / "qrels.jsonl", [good, second_line])
    with pytest.raises(QrelsError, match=r"qrels\.jsonl line 2\b.*" + re.escape(problem)):
        load_qrels(qrels)


def test_qrels_file_errors(tmp_path: Path) -> None:
    with pytest.raises(QrelsError, match="does not exist"):
        load_qrels(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(QrelsError, match="holds no queries"):
        load_qrels(tmp_path / "empty.jsonl")
    assert issubclass(QrelsError, MmragError)


def _single_query(tmp_path: Path, relevant: list[dict[str, object]]) -> Query:
    return load_qrels(
        write_qrels(tmp_path / "qrels.jsonl", [{"id": "q", "text": "x", "relevant": relevant}])
    )[0]


def test_suffix_paths_match_by_whole_components(tmp_path: Path) -> None:
    entry = _single_query(tmp_path, [{"path": "photos/cat.jpg"}]).relevant[0]
    assert entry.resolved is None
    assert entry.matches("/data/photos/cat.jpg", None)
    assert entry.matches("/elsewhere/photos/cat.jpg", 4)  # no page given: any item of the file
    assert entry.matches("photos/./cat.jpg", None)
    assert not entry.matches("/data/myphotos/cat.jpg", None)
    assert not entry.matches("/data/photos/cat.jpg.bak", None)
    assert not entry.matches("/data/cat.jpg", None)


def test_existing_relative_paths_resolve_against_the_qrels_folder(tmp_path: Path) -> None:
    photo = write_photos(tmp_path / "set" / "photos", ["chelsea"])["chelsea"]
    write_photos(tmp_path / "other" / "photos", ["chelsea"])
    query = _single_query(tmp_path / "set", [{"path": "photos/chelsea.jpg"}])
    assert query.match(str(photo.resolve()), None) == 0
    # Same file name, same folder name, another copy: not the judged file.
    assert query.match(str((tmp_path / "other" / "photos" / "chelsea.jpg").resolve()), None) is None


def test_hit_paths_through_a_symlink_match_the_resolved_entry(tmp_path: Path) -> None:
    write_photos(tmp_path / "real" / "photos", ["coffee"])
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    query = _single_query(tmp_path / "real", [{"path": "photos/coffee.jpg"}])
    assert query.match(str(tmp_path / "link" / "photos" / "coffee.jpg"), None) == 0


def test_page_entries_match_only_their_page(tmp_path: Path) -> None:
    query = _single_query(tmp_path, [{"path": "docs/report.pdf", "page": 3}, {"path": "notes.md"}])
    assert query.match("/data/docs/report.pdf", 3) == 0
    assert query.match("/data/docs/report.pdf", 2) is None
    assert query.match("/data/docs/report.pdf", None) is None
    assert query.match("/data/notes.md", None) == 1
    assert query.match("/data/notes.md", 7) == 1


# --- runner ------------------------------------------------------------------------------------------


@pytest.fixture
def three_queries(tmp_path: Path) -> list[Query]:
    records = [
        {
            "id": "cat",
            "text": "a cat",
            "relevant": [
                {"path": "photos/chelsea.jpg"},
                {"path": "docs/report.pdf", "page": 3},
                {"path": "notes.md"},
            ],
        },
        {
            "id": "astronaut",
            "text": "astronaut in a space suit",
            "relevant": [{"path": "photos/astronaut.jpg"}],
        },
        {"id": "coffee", "text": "cup of coffee", "relevant": [{"path": "photos/coffee.jpg"}]},
    ]
    return load_qrels(write_qrels(tmp_path / "qrels.jsonl", records))


# Rankings per (query id, space); None is the fused ranking.
CANNED: dict[tuple[str, str | None], list[RankedHit]] = {
    ("cat", None): [
        RankedHit("/data/photos/other.jpg"),
        RankedHit("/data/notes.md"),  # three chunks of one relevant note
        RankedHit("/data/notes.md"),
        RankedHit("/data/notes.md"),
        RankedHit("/data/docs/report.pdf", 2),  # wrong page
        RankedHit("/data/docs/report.pdf", 3),
        RankedHit("/data/photos/chelsea.jpg"),
    ],
    ("astronaut", None): [RankedHit("/data/photos/astronaut.jpg"), RankedHit("/data/photos/coffee.jpg")],
    ("coffee", None): [],
    ("cat", "clip"): [RankedHit("/data/photos/chelsea.jpg")],
    ("astronaut", "clip"): [RankedHit("/data/photos/coffee.jpg"), RankedHit("/data/photos/astronaut.jpg")],
    ("coffee", "clip"): [RankedHit("/data/photos/coffee.jpg")],
}


class CannedSearch:
    """A search function answering from the CANNED table, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, list[str] | None]] = []

    def __call__(self, query: Query, k: int, spaces: Sequence[str] | None = None) -> list[RankedHit]:
        self.calls.append((query.id, k, None if spaces is None else list(spaces)))
        space = None if spaces is None else spaces[0]
        return CANNED[(query.id, space)][:k]


def test_run_eval_scores_canned_rankings(three_queries: list[Query]) -> None:
    report = run_eval(three_queries, CannedSearch(), per_space=["clip"])
    fused = report.fused
    assert fused.queries == 3
    assert fused.recall == pytest.approx({1: 1 / 3, 5: 2 / 3, 10: 2 / 3})
    assert fused.mrr == pytest.approx((1 / 2 + 1 + 0) / 3)
    # cat: relevant keys first appear at ranks 2 (notes), 6 (page 3), 7 (photo); repeats of notes.md add 0.
    cat_dcg = 1 / math.log2(3) + 1 / math.log2(7) + 1 / math.log2(8)
    cat_ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert fused.ndcg == pytest.approx((cat_dcg / cat_ideal + 1.0 + 0.0) / 3)
    outcomes = {o.query_id: o for o in fused.per_query}
    assert outcomes["cat"].first_relevant_rank == 2 and outcomes["cat"].returned == 7
    assert outcomes["coffee"].first_relevant_rank is None and outcomes["coffee"].ndcg == 0.0
    assert fused.latency_p95_ms >= fused.latency_p50_ms >= 0.0

    clip = report.ranking("clip")
    assert clip.recall == pytest.approx({1: 2 / 3, 5: 1.0, 10: 1.0})
    assert clip.mrr == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert [r.name for r in report.rankings] == ["fused", "clip"]


def test_run_eval_asks_for_the_deepest_cutoff_and_warms_up_once(three_queries: list[Query]) -> None:
    search = CannedSearch()
    run_eval(three_queries, search, k_values=(1, 3), per_space=["clip"], ndcg_k=20)
    assert {k for _, k, _ in search.calls} == {20}
    fused_calls = [c for c in search.calls if c[2] is None]
    clip_calls = [c for c in search.calls if c[2] == ["clip"]]
    assert [c[0] for c in fused_calls] == ["cat", "cat", "astronaut", "coffee"]  # warm-up, then timed
    assert len(clip_calls) == 4 and len(search.calls) == 8

    search = CannedSearch()
    run_eval(three_queries, search, warmup=False)
    assert [c[0] for c in search.calls] == ["cat", "astronaut", "coffee"]


def test_run_eval_takes_a_plain_two_argument_function(three_queries: list[Query]) -> None:
    def fused_only(query: Query, k: int) -> list[RankedHit]:
        return CANNED[(query.id, None)][:k]

    report = run_eval(three_queries, fused_only, k_values=(1,))
    assert report.fused.recall == pytest.approx({1: 1 / 3})
    with pytest.raises(ValueError, match="at least 1"):
        run_eval(three_queries, fused_only, k_values=(0, 5))
    with pytest.raises(ValueError, match="no queries"):
        run_eval([], fused_only)


def test_report_to_dict_and_table(three_queries: list[Query]) -> None:
    report = run_eval(three_queries, CannedSearch(), per_space=["clip"])
    data = json.loads(json.dumps(report.to_dict()))  # must be JSON-ready
    assert data["k_values"] == [1, 5, 10] and data["depth"] == 10
    fused = data["rankings"]["fused"]
    assert fused["queries"] == 3
    assert fused["recall@1"] == pytest.approx(1 / 3) and fused["mrr"] == pytest.approx(0.5)
    assert set(fused["latency_ms"]) == {"p50", "p95"} and "ndcg@10" in fused
    assert [q["query_id"] for q in fused["per_query"]] == ["cat", "astronaut", "coffee"]
    assert data["rankings"]["clip"]["recall@5"] == pytest.approx(1.0)

    table = render_report(report)
    assert [c.header for c in table.columns] == [
        "ranking", "queries", "R@1", "R@5", "R@10", "MRR", "nDCG@10", "p50 ms", "p95 ms"
    ]  # fmt: skip
    assert table.row_count == 2
    console = Console(record=True, width=140)
    console.print(table)
    text = console.export_text()
    assert re.search(r"fused\s+│\s+3\s+│\s+0\.333\s+│\s+0\.667\s+│\s+0\.667\s+│\s+0\.500", text), text


def test_hits_to_keys_credits_a_fresh_entry_first(tmp_path: Path) -> None:
    query = _single_query(tmp_path, [{"path": "r.pdf"}, {"path": "r.pdf", "page": 3, "grade": 2}])
    hits = [RankedHit("/d/r.pdf", 3), RankedHit("/d/r.pdf", 1), RankedHit("/d/r.pdf", 3), RankedHit("/d/x")]
    # Page 3 matches both entries: the higher grade first; page 1 then finds the whole-file entry.
    assert hits_to_keys(query, hits) == [1, 0, 0, ("miss", 3)]


class TableRetriever:
    """A ranking source with Retriever.search's keyword signature, answering from a fixed table; it
    records the image it was given so the adapter's decoding can be checked."""

    def __init__(self) -> None:
        self.images: list[Image.Image | None] = []
        self.spaces: list[list[str] | None] = []

    def search(
        self,
        text: str | None = None,
        image: Image.Image | None = None,
        k: int = 10,
        spaces: list[str] | None = None,
    ) -> list[RankedHit]:
        self.images.append(image)
        self.spaces.append(spaces)
        return [RankedHit("/data/photos/chelsea.jpg")][:k]


def test_retriever_search_fn_decodes_query_images_and_passes_spaces(tmp_path: Path) -> None:
    write_photos(tmp_path / "queries", ["chelsea"])
    query = load_qrels(
        write_qrels(
            tmp_path / "qrels.jsonl",
            [{"id": "q", "image": "queries/chelsea.jpg", "relevant": [{"path": "photos/chelsea.jpg"}]}],
        )
    )[0]
    retriever = TableRetriever()
    report = run_eval([query], retriever_search_fn(retriever, [query]), per_space=["clip"], warmup=False)
    assert report.fused.mrr == 1.0 and report.ranking("clip").mrr == 1.0
    assert retriever.spaces == [None, ["clip"]]
    first = retriever.images[0]
    assert first is not None and first.mode == "RGB" and first.size == (451, 300)  # chelsea's size

    class NoSpaces:
        def search(self, text: str | None = None, image: object = None, k: int = 10) -> list[RankedHit]:
            return []

    with pytest.raises(ConfigError, match="no 'spaces' argument"):
        run_eval([query], retriever_search_fn(NoSpaces(), [query]), per_space=["clip"])


def test_retriever_search_fn_reports_unreadable_query_images(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    query = load_qrels(
        write_qrels(tmp_path / "q.jsonl", [{"id": "q", "image": "broken.jpg", "relevant": [{"path": "a"}]}])
    )[0]
    with pytest.raises(QrelsError, match="query 'q': cannot read image"):
        retriever_search_fn(TableRetriever(), [query])


# --- real-data sets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_photo_set(tmp_path_factory.mktemp("photo-set"))


def test_photo_set_writes_real_photos_docs_and_pdf(photo_set: Path) -> None:
    folder = photo_set.parent
    for name in PHOTO_NAMES:
        with Image.open(folder / "photos" / f"{name}.jpg") as image:
            assert image.format == "JPEG"
            image.load()  # decodes the whole file
            assert min(image.size) >= 256
    with Image.open(folder / "photos" / "chelsea.jpg") as image:
        assert image.size == (451, 300)
    chelsea_doc = (folder / "docs" / "chelsea.md").read_text()
    assert "Chelsea the cat." in chelsea_doc and "texture, prominent edges" in chelsea_doc
    assert (folder / "docs" / "coins.md").read_text().count("Greek coins from Pompeii.") == 1
    assert not (folder / "docs" / "china.md").exists()  # sklearn describes only the licence

    with pymupdf.open(folder / "pdfs" / "figures.pdf") as pdf:
        assert pdf.page_count == len(PDF_PAGES)
        for page, names in zip(pdf, PDF_PAGES, strict=True):
            assert len(page.get_image_info()) == len(names)
        assert "Chelsea the cat." in pdf[1].get_text() and "Coffee cup." in pdf[1].get_text()
        assert "Launch photo of DSCOVR on Falcon 9 by SpaceX." in pdf[0].get_text()
        assert "Chelsea the cat." in pdf[4].get_text()


def test_photo_set_qrels_point_at_existing_files(photo_set: Path) -> None:
    queries = load_qrels(photo_set)
    assert len(queries) == sum(len(texts) for texts in PHOTO_QUERIES.values())
    with pymupdf.open(photo_set.parent / "pdfs" / "figures.pdf") as pdf:
        page_count = pdf.page_count
    for query in queries:
        for entry in query.relevant:
            assert entry.resolved is not None and entry.resolved.is_file(), (query.id, entry.path)
            assert entry.page is None or 1 <= entry.page <= page_count
    cat = next(q for q in queries if q.text == "a cat")
    assert {(e.path, e.page) for e in cat.relevant} == {
        ("photos/chelsea.jpg", None),
        ("pdfs/figures.pdf", 2),
        ("pdfs/figures.pdf", 5),
        ("docs/chelsea.md", None),
    }
    hopper = next(q for q in queries if q.id == "grace_hopper-1")
    assert [e.path for e in hopper.relevant] == ["photos/grace_hopper.jpg"]
    # An indexed copy of the photo set reports absolute paths; those match.
    assert cat.match(str(photo_set.parent / "photos" / "chelsea.jpg"), None) == 0


def _words(text: str) -> set[str]:
    return {w.strip(string.punctuation) for w in text.lower().split()} - {"a", "an", "the", "of", "in", "on"}


def test_docstring_documents_answer_their_photo_queries(photo_set: Path) -> None:
    """The docstrings give text retrieval something real to find: a plain word-overlap ranking of the
    Markdown files already puts the right file first for queries that use the docstring's words."""
    docs = {path: _words(path.read_text()) for path in sorted((photo_set.parent / "docs").glob("*.md"))}

    def word_overlap(query: Query, k: int) -> list[RankedHit]:
        wanted = _words(query.text or "")
        ranked = sorted(docs, key=lambda path: (-len(wanted & docs[path]), path.name))
        return [RankedHit(str(path)) for path in ranked if wanted & docs[path]][:k]

    wording_shared = {"a clock", "coins", "the moon", "brick wall", "gravel", "retina of an eye"}
    queries = [q for q in load_qrels(photo_set) if q.text in wording_shared]
    assert len(queries) == len(wording_shared)
    report = run_eval(queries, word_overlap)
    assert report.fused.recall[1] == 1.0, report.to_dict()["rankings"]["fused"]["per_query"]


def test_digits_set_labels_come_from_load_digits(tmp_path: Path) -> None:
    queries = load_qrels(build_digits_set(tmp_path, n_per_class=3))
    digits = load_digits()
    assert [q.text for q in queries] == [f"handwritten digit {d}" for d in range(10)]
    for digit, query in enumerate(queries):
        assert len(query.relevant) == 3
        for entry in query.relevant:
            assert entry.resolved is not None
            assert digits.target[int(entry.resolved.stem)] == digit
            with Image.open(entry.resolved) as image:
                assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "L")
                # Dark ink on white paper: the background corner is white.
                assert image.getpixel((0, 0)) == 255
    assert len(list((tmp_path / "digits").glob("*.png"))) == 30
    with pytest.raises(ValueError, match="n_per_class"):
        build_digits_set(tmp_path, n_per_class=0)


def test_lfw_set_marks_the_first_hundred_as_faces(tmp_path: Path) -> None:
    (query,) = load_qrels(build_lfw_set(tmp_path, size=50))
    assert query.text == "a photo of a face"
    assert [e.path for e in query.relevant] == [f"lfw/{i:03d}.png" for i in range(100)]
    written = sorted((tmp_path / "lfw").glob("*.png"))
    assert len(written) == len(skimage.data.lfw_subset()) == 200
    for path in (written[0], written[150]):
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (50, 50))
    assert all(entry.resolved is not None and entry.resolved.is_file() for entry in query.relevant)


# --- PDF outline sections ------------------------------------------------------------------------------

# Page texts are skimage.data docstrings: real prose nobody here wrote. The outline puts two sections on
# page 2, lets "Rocket" run on over page 4, and repeats the title "Examples" (pages 5 and 6).
_OUTLINED_PAGES = ("astronaut", "chelsea", "rocket", "rocket", "moon", "clock")
_OUTLINE = [
    [1, "Astronaut", 1],
    [1, "Chelsea", 2],
    [2, "Coffee  cup", 2],
    [1, "Rocket", 3],
    [1, "Examples", 5],
    [2, "examples", 6],
]


def _write_outlined_pdf(path: Path, outline: list[list[object]] | None = None) -> Path:
    doc = pymupdf.open()
    for name in _OUTLINED_PAGES:
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 545, 800), inspect.getdoc(getattr(skimage.data, name)))
    doc.set_toc(_OUTLINE if outline is None else outline)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def _relevant_pages(query: Query) -> list[tuple[int | None, float]]:
    return [(entry.page, entry.grade) for entry in query.relevant]


def test_outline_sections_run_to_the_next_entry(tmp_path: Path) -> None:
    sections = outline_sections(_write_outlined_pdf(tmp_path / "book.pdf"))
    assert [(s.title, s.page, s.last_page) for s in sections] == [
        ("Astronaut", 1, 1),
        ("Chelsea", 2, 2),  # the next section starts on the same page
        ("Coffee cup", 2, 2),  # whitespace collapsed
        ("Rocket", 3, 4),  # page 4 has no heading of its own
        ("Examples", 5, 5),
        ("examples", 6, 6),  # the last section runs to the end of the document
    ]
    assert [s.index for s in sections] == list(range(6))


def test_pdf_sections_set_queries_titles_for_their_pages(tmp_path: Path) -> None:
    source = _write_outlined_pdf(tmp_path / "src" / "book.pdf")
    qrels = build_pdf_sections_set(tmp_path / "set", pdf=source, n_queries=None)
    copy = tmp_path / "set" / "pdfs" / "book.pdf"
    assert copy.read_bytes() == source.read_bytes()
    queries = load_qrels(qrels)
    # "Examples" twice (case aside) says nothing about which page is meant: left out.
    assert {q.text: _relevant_pages(q) for q in queries} == {
        "Astronaut": [(1, 2.0)],
        "Chelsea": [(2, 2.0)],
        "Coffee cup": [(2, 2.0)],
        "Rocket": [(3, 2.0), (4, 1.0)],
    }
    assert [q.id for q in queries] == ["section-0000", "section-0001", "section-0002", "section-0003"]
    assert all(entry.resolved == copy.resolve() for q in queries for entry in q.relevant)
    with pymupdf.open(copy) as pdf:  # the expected page really holds the section's text
        assert "Chelsea the cat." in pdf[1].get_text()
        assert "Launch photo of DSCOVR" in pdf[2].get_text()


def test_pdf_sections_set_draws_a_seeded_sample(tmp_path: Path) -> None:
    source = _write_outlined_pdf(tmp_path / "book.pdf")

    def drawn(folder: str, seed: int) -> list[str]:
        return [q.id for q in load_qrels(build_pdf_sections_set(tmp_path / folder, source, 2, seed=seed))]

    first = drawn("a", seed=0)
    assert len(first) == 2 and first == sorted(first)  # in document order
    assert drawn("b", seed=0) == first
    assert {tuple(drawn(f"seed{seed}", seed)) for seed in range(8)} != {tuple(first)}
    with pytest.raises(ValueError, match="n_queries"):
        build_pdf_sections_set(tmp_path / "c", source, 0)


def test_pdf_sections_set_page_range_keeps_its_outline(tmp_path: Path) -> None:
    source = _write_outlined_pdf(tmp_path / "book.pdf")
    qrels = build_pdf_sections_set(tmp_path / "set", source, n_queries=None, pages=(2, 4))
    copy = tmp_path / "set" / "pdfs" / "book-pages-2-4.pdf"
    with pymupdf.open(copy) as pdf, pymupdf.open(source) as original:
        assert pdf.page_count == 3
        assert pdf[0].get_text() == original[1].get_text()
        assert [entry[1:] for entry in pdf.get_toc()] == [["Chelsea", 1], ["Coffee  cup", 1], ["Rocket", 2]]
    assert {q.text: _relevant_pages(q) for q in load_qrels(qrels)} == {
        "Chelsea": [(1, 2.0)],
        "Coffee cup": [(1, 2.0)],
        "Rocket": [(2, 2.0), (3, 1.0)],  # clipped to the range's last page
    }


def test_pdf_sections_set_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "gnuplot.pdf"
    monkeypatch.setattr(datasets, "GNUPLOT_PDF", missing)
    with pytest.raises(EvalSetError, match="apt-get install gnuplot-doc"):
        build_pdf_sections_set(tmp_path / "a", pdf=missing)
    with pytest.raises(EvalSetError, match="PDF not found"):
        build_pdf_sections_set(tmp_path / "b", pdf=tmp_path / "other.pdf")

    flat = _write_outlined_pdf(tmp_path / "flat.pdf", outline=[])
    with pytest.raises(EvalSetError, match="no outline"):
        build_pdf_sections_set(tmp_path / "c", pdf=flat)
    not_pdf = tmp_path / "notes.pdf"
    not_pdf.write_text("# just Markdown\n")
    with pytest.raises(EvalSetError, match=r"notes\.pdf"):
        build_pdf_sections_set(tmp_path / "d", pdf=not_pdf)
    book = _write_outlined_pdf(tmp_path / "book.pdf")
    with pytest.raises(EvalSetError, match="outside"):
        build_pdf_sections_set(tmp_path / "e", pdf=book, pages=(5, 9))
    only_examples = _write_outlined_pdf(tmp_path / "ex.pdf", outline=[[1, "Examples", 1], [1, "Examples", 2]])
    with pytest.raises(EvalSetError, match="more than once"):
        build_pdf_sections_set(tmp_path / "f", pdf=only_examples)
    assert issubclass(EvalSetError, MmragError)


def _gnuplot_manual() -> Path:
    """The Debian gnuplot-doc manual; CI installs it (.ci/run), so there its absence is a failure."""
    if not GNUPLOT_PDF.is_file():
        reason = f"{GNUPLOT_PDF} missing: apt-get install gnuplot-doc"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    return GNUPLOT_PDF


def test_gnuplot_manual_outline_gives_the_sections_set() -> None:
    sections = outline_sections(_gnuplot_manual())
    assert len(sections) == 648
    by_title = {s.title: s for s in sections}
    assert [by_title[t].page for t in ("Copyright", "Voxel grids", "Xyerrorbars")] == [21, 23, 82]
    with pymupdf.open(GNUPLOT_PDF) as pdf:
        assert pdf.page_count == 311
        for title in ("Copyright", "Voxel grids", "Xyerrorbars"):  # the heading is printed on its page
            assert title in pdf[by_title[title].page - 1].get_text()


@pytest.mark.slow
def test_gnuplot_sections_retrieved_end_to_end(tmp_path: Path) -> None:
    """Pages 21-30 of the real manual (19 titles that occur once), indexed with the offline profile's real
    MiniLM weights: the outline's titles find their pages. A page-numbering mistake in the builder would
    drop recall@1 to near zero."""
    from mmrag.ingest.pipeline import Indexer
    from mmrag.runtime import open_runtime
    from mmrag.settings import load_settings

    qrels = build_pdf_sections_set(tmp_path / "set", _gnuplot_manual(), n_queries=None, pages=(21, 30))
    offline_profile = Path(__file__).parent.parent / "configs" / "offline.yaml"
    settings = load_settings(offline_profile, data_dir=tmp_path / "data")
    runtime = open_runtime(settings)
    try:
        with runtime.collection.writer():
            indexer = Indexer(settings, runtime.collection, runtime.vectoriser())
            report = indexer.run([tmp_path / "set" / "pdfs"])
        assert (report.indexed, report.failed) == (1, [])
        queries = load_qrels(qrels)
        fused = run_eval(queries, retriever_search_fn(runtime.retriever(), queries)).fused
    finally:
        runtime.close()
    assert fused.queries == len(queries) == 19
    scores = (fused.recall[1], fused.recall[5], fused.recall[10], fused.mrr)
    # Measured: R@1 0.63, R@5 0.79, R@10 0.95, MRR 0.72.
    assert fused.recall[1] >= 0.5 and fused.recall[10] >= 0.8, scores
