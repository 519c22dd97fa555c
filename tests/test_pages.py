"""Page-level results: chunks of one PDF page become one hit; contents and index pages, recognised on real
manuals, rank below the pages they list and are never dropped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmrag.evaluation.datasets import BASHREF_PDF, GNUPLOT_PDF
from mmrag.ingest.listpages import LIST_PAGE_KEY, PAGE_LABEL_KEY, page_layout
from mmrag.ingest.mupdf import pymupdf
from mmrag.retrieve.pages import demote_list_pages, group_pages
from mmrag.retrieve.search import Hit


def _hit(item_id: int, path: str, page: int | None, modality: str = "text") -> Hit:
    return Hit(item_id, 10.0 - item_id, modality, path, page, None, f"item {item_id}", None)


def test_chunks_of_a_page_become_one_hit_at_the_place_of_the_best() -> None:
    hits = [
        _hit(1, "/m.pdf", 3),
        _hit(2, "/m.pdf", 5),
        _hit(3, "/m.pdf", 3),
        _hit(4, "/m.pdf", 3, modality="image"),  # a picture on the page stays a hit of its own
        _hit(5, "/notes.md", None),
        _hit(6, "/notes.md", None),  # a text file has no pages: it is one
        _hit(7, "/other.pdf", 3),  # same page number, another file
        _hit(8, "/m.pdf", 5),
        _hit(9, "/photo.jpg", None, modality="image"),
    ]
    grouped = group_pages(hits)
    assert [h.item_id for h in grouped] == [1, 2, 4, 5, 7, 9]
    assert {h.item_id: h.more_on_page for h in grouped} == {1: 1, 2: 1, 4: 0, 5: 1, 7: 0, 9: 0}
    assert grouped[0].text == "item 1" and grouped[0].score == 9.0  # the best chunk is shown


def test_a_list_page_moves_below_the_last_page_it_points_to() -> None:
    toc, index = _hit(1, "/m.pdf", 2), _hit(6, "/m.pdf", 300)
    hits = [
        toc,
        _hit(2, "/m.pdf", 40),
        _hit(3, "/other.pdf", 23),
        index,
        _hit(4, "/m.pdf", 29),
        _hit(5, "/m.pdf", 8),
    ]
    meta = {
        1: {LIST_PAGE_KEY: ["23", "9"], PAGE_LABEL_KEY: "2"},  # lists printed pages 23 and 9
        2: {PAGE_LABEL_KEY: "34"},
        3: {PAGE_LABEL_KEY: "23"},  # page 23 of another document: not what the contents points to
        4: {PAGE_LABEL_KEY: "23"},  # physical 29 carries the printed 23 (front matter)
        5: {},  # no label: its position in the file, 8, is not 9
        6: {LIST_PAGE_KEY: ["1", "2"]},  # points to nothing among the hits: keeps its place
    }
    assert [h.item_id for h in demote_list_pages(hits, meta)] == [2, 3, 6, 4, 1, 5]
    assert demote_list_pages(hits, {}) == hits


def _manual(path: Path, package: str) -> pymupdf.Document:
    if not path.is_file():
        reason = f"{path} missing: apt-get install {package}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    return pymupdf.open(path)


@pytest.mark.parametrize(
    ("pdf", "package", "contents", "index", "body"),
    [
        # gnuplot: contents 2-20 (page 20 holds 4 lines), index 304-311; body pages with many numbers:
        # 165 (code examples), 301 (X resources "gnuplot*line1Width: 0"), 21 (the first page of text)
        (GNUPLOT_PDF, "gnuplot-doc", [2, 11, 20], [304, 311], [1, 21, 165, 301, 303]),
        # bashref: contents 3-6 (dot leaders), a two-column index 188-196 with letter headings
        (BASHREF_PDF, "bash-doc", [3, 6], [188, 189, 196], [1, 2, 7, 35, 97, 187]),
    ],
)
def test_contents_and_index_pages_of_real_manuals(
    pdf: Path, package: str, contents: list[int], index: list[int], body: list[int]
) -> None:
    with _manual(pdf, package) as doc:
        layouts = {number: page_layout(doc[number - 1], doc.page_count) for number in contents + index + body}
    assert [n for n in contents + index if layouts[n].points_to is None] == []
    assert [n for n in body if layouts[n].points_to is not None] == []


def test_printed_page_numbers_are_read_where_the_pdf_counts_otherwise() -> None:
    with _manual(BASHREF_PDF, "bash-doc") as doc:
        # physical page 11 prints "5" (3 Basic Shell Features); the contents (page 3) lists it
        assert page_layout(doc[10], doc.page_count).label == "5"
        listed = page_layout(doc[2], doc.page_count).points_to
    assert listed is not None and {"1", "3", "5"} <= set(listed)
    with _manual(GNUPLOT_PDF, "gnuplot-doc") as doc:
        assert [page_layout(doc[n - 1], doc.page_count).label for n in (21, 139, 304)] == ["21", "139", "304"]
