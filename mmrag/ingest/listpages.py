"""Pages that only list other pages: tables of contents and indexes (lines of titles and page numbers).

Such a page holds every title of a manual, so a title query finds it before the page the title is about
(the gnuplot manual's 20-page table of contents took the first rank for 80 of 100 section titles). It is
recognised here, at ingest, and ranked below the pages it points to at query time
(mmrag.retrieve.pages.demote_list_pages); it stays searchable.

A visual line (words at one height, whatever block MuPDF put them in) is a pointer line when it ends in a
page number (1 to the page count + 50, or a range "298-302") after a title: a dot leader, a comma or a
word that does not end in ':' or '=' (so "line1Width: 0" is a setting, not a pointer). A page is a list
page when at least 4 of its lines and at least half of its lines of two or more words are pointer lines;
the running header and footer (the outer 10% of the page height) are not counted. Measured on the
gnuplot manual (311 pages), Debian's Bash reference manual (196) and Asymptote manual (196): every contents
and index page is found (27, 13 and 14 pages; the lowest share among them 0.70) and no other page comes
near (the highest 0.24: a page of code examples).

Also here: a page's printed number (its label), so that "p. 23" in a table of contents can be matched with
the page that carries that number even where the PDF counts its front matter (bashref: printed 1 =
physical 7).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mmrag.ingest.mupdf import pymupdf

LIST_PAGE_KEY = "list_page"  # item meta: the page numbers (labels) a list page points to
PAGE_LABEL_KEY = "page_label"  # item meta: the number printed on the item's page, where one was found
MIN_POINTER_LINES = 4
MIN_POINTER_SHARE = 0.5
_MARGIN = 0.10  # header and footer band, as a share of the page height
_NUMBER = re.compile(r"^(\d{1,5})(?:[\u2013\u2014-](\d{1,5}))?[,.;]?$")
_LETTER = re.compile(r"[^\W\d_]")
_LEADER = re.compile(r"^\.+$")
_MAX_HEADER_WORDS = 12
_MAX_RANGE = 50  # "298-302" points to 5 pages; a wider "range" is something else


@dataclass(frozen=True)
class PageLayout:
    """What one page says about its role: its printed number, and the pages it points to if it lists."""

    label: str | None
    points_to: tuple[str, ...] | None  # None: not a list page


def visual_lines(page: pymupdf.Page) -> list[tuple[float, list[str]]]:
    """(vertical centre, words left to right) of each line as it is seen: words at one height are one line
    even when the PDF wrote them as separate blocks (a title and its page number)."""
    lines: list[tuple[float, float, list[tuple[float, str]]]] = []  # (centre, height, [(x0, word)])
    for x0, y0, _, y1, word, *_ in sorted(page.get_text("words"), key=lambda w: ((w[1] + w[3]) / 2, w[0])):
        centre, height = (y0 + y1) / 2, y1 - y0
        if lines and abs(lines[-1][0] - centre) < max(2.0, 0.4 * height):
            lines[-1][2].append((x0, word))
        else:
            lines.append((centre, height, [(x0, word)]))
    return [(centre, [w for _, w in sorted(words)]) for centre, _, words in lines]


def _page_numbers(token: str, max_page: int) -> list[int]:
    match = _NUMBER.match(token)
    if match is None:
        return []
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else first
    if not 1 <= first <= last <= max_page or last - first > _MAX_RANGE:
        return []
    return list(range(first, last + 1))


def pointer_numbers(words: Sequence[str], max_page: int) -> list[int]:
    """The page numbers a line points to, or [] when it is not a pointer line."""
    if len(words) < 2 or not _page_numbers(words[-1], max_page):
        return []
    before = words[-2]
    if before.endswith((":", "=")) or not any(_LETTER.search(w) for w in words[:-1]):
        return []
    numbers: list[int] = []
    for index, word in enumerate(words):  # also the left column's number on a two-column index line
        if index == len(words) - 1 or _LEADER.match(words[index - 1] if index else "x") or word.endswith(","):
            numbers += _page_numbers(word, max_page)
    return numbers


def page_layout(page: pymupdf.Page, page_count: int) -> PageLayout:
    """The page's printed number and, for a table of contents or an index, the numbers it lists."""
    height = page.rect.height
    max_page = page_count + 50
    body: list[list[str]] = []
    margin: list[list[str]] = []
    seen = visual_lines(page)
    for centre, words in seen:
        inside = _MARGIN * height < centre < (1 - _MARGIN) * height
        (body if inside else margin).append(words)
    lines = [words for words in body if len(words) >= 2]
    pointers = [numbers for words in lines if (numbers := pointer_numbers(words, max_page))]
    listed = len(pointers) >= MIN_POINTER_LINES and len(pointers) >= MIN_POINTER_SHARE * len(lines)
    points_to = (
        tuple(str(n) for n in sorted({n for numbers in pointers for n in numbers})) if listed else None
    )
    outer = [lines_[0], lines_[-1]] if (lines_ := [w for _, w in seen]) else []
    return PageLayout(
        label=_label(page, [w for w in outer if any(w is m for m in margin)]), points_to=points_to
    )


def _label(page: pymupdf.Page, margin_lines: list[list[str]]) -> str | None:
    """The PDF's own page label, else the number that starts or ends the running header or footer
    ("gnuplot 5.4 21", "Chapter 2: Definitions 4"): the first and last lines, when they are in the margin."""
    try:
        label = page.get_label()
    except Exception:  # a damaged /PageLabels tree: fall back to the printed number
        label = ""
    if label:
        return str(label)
    for words in margin_lines:  # the header first; the footer only when the header has no number
        ends = {words[end] for end in (0, -1) if words[end].isdigit() and len(words[end]) <= 5}
        if len(words) <= _MAX_HEADER_WORDS and len(ends) == 1:
            return ends.pop()
    return None
