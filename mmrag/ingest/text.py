"""Plain-text and Markdown files -> word-window chunks that remember the line they start on.

Chunks are sized in words because the CLIP text tower reads 77 tokens: settings.chunk_words (~48) words fit.
Markdown is split on headings first so a chunk never straddles two sections, and every chunk starts with the
nearest headings of its section ("Guide > Install"), which is often the best retrieval cue a paragraph has.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import ExtractionError
from mmrag.ingest.items import ExtractedItem, Modality, sha256_text
from mmrag.settings import IngestSettings

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HEADING_SEPARATOR = " > "
_PREFIX_HEADINGS = 2

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_OR_QUOTE = re.compile(r"^ {0,3}([-*+>]|\d+[.)])(\s|$)")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def word_windows(word_count: int, size: int, overlap: int) -> list[range]:
    """Index ranges of consecutive windows of `size` words, each sharing `overlap` words with the last.

    The last window ends at the last word; a tail shorter than `size` is its own window only when it holds
    words no earlier window covered.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 word, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must be in [0, {size}), got {overlap}")
    windows: list[range] = []
    step = size - overlap
    start = 0
    while start < word_count:
        end = min(start + size, word_count)
        windows.append(range(start, end))
        if end == word_count:
            break
        start += step
    return windows


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Split text into windows of `size` words overlapping by `overlap`; whitespace becomes single spaces."""
    words = text.split()
    return [" ".join(words[window.start : window.stop]) for window in word_windows(len(words), size, overlap)]


@dataclass
class _Section:
    heading_path: tuple[str, ...]
    heading_line: int  # 1-based; 0 for text before the first heading
    words: list[str]
    word_lines: list[int]  # 1-based line of each word
    has_subsections: bool = False


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped), else latin-1, which never fails; newlines normalised to \\n."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def extract_text_file(path: Path, settings: IngestSettings) -> list[ExtractedItem]:
    """Chunks of a .txt/.md/.rst file; an empty or whitespace-only file gives an empty list."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(f"cannot read text file {path}: {exc.strerror or exc}") from exc
    text = decode_text(data)
    if not text.strip():
        return []
    if path.suffix.lower() in MARKDOWN_SUFFIXES:
        sections = _markdown_sections(text)
    else:
        sections = [_plain_section(text)]
    return _chunk_sections(sections, settings.chunk_words, settings.chunk_overlap_words)


def _plain_section(text: str) -> _Section:
    section = _Section(heading_path=(), heading_line=0, words=[], word_lines=[])
    for line_number, line in enumerate(text.split("\n"), start=1):
        _add_words(section, line, line_number)
    return section


def _add_words(section: _Section, line: str, line_number: int) -> None:
    words = line.split()
    section.words.extend(words)
    section.word_lines.extend([line_number] * len(words))


def _markdown_sections(text: str) -> list[_Section]:
    """Split on ATX (# Title) and setext (Title / =====) headings, ignoring '#' lines inside code fences."""
    lines = text.split("\n")
    sections = [_Section(heading_path=(), heading_line=0, words=[], word_lines=[])]
    # level -> heading text of the currently open heading at that level
    open_headings: dict[int, str] = {}
    fence: str | None = None

    def start_section(level: int, title: str, line_number: int) -> None:
        for deeper in [lvl for lvl in open_headings if lvl >= level]:
            del open_headings[deeper]
        open_headings[level] = title
        path = tuple(open_headings[lvl] for lvl in sorted(open_headings))
        sections.append(_Section(heading_path=path, heading_line=line_number, words=[], word_lines=[]))

    for index, line in enumerate(lines):
        line_number = index + 1
        fence_match = _FENCE.match(line)
        if fence is not None:
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
            ):
                fence = None
            else:
                _add_words(sections[-1], line, line_number)
            continue
        if fence_match:
            fence = fence_match.group(1)
            continue
        atx = _ATX_HEADING.match(line)
        if atx:
            title = _clean_inline(atx.group(2) or "")
            if title:
                start_section(len(atx.group(1)), title, line_number)
            continue
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and _SETEXT_UNDERLINE.match(next_line) and not _LIST_OR_QUOTE.match(line):
            # Only a single-line paragraph is taken as a setext heading: a '---' under a longer paragraph
            # is ambiguous enough (thematic break in many writers' minds) to leave alone.
            previous = lines[index - 1] if index > 0 else ""
            if not previous.strip() or _ATX_HEADING.match(previous):
                level = 1 if next_line.strip().startswith("=") else 2
                start_section(level, _clean_inline(line.strip()), line_number)
                lines[index + 1] = ""  # the underline is markup, not words
                continue
        _add_words(sections[-1], _clean_inline(line), line_number)
    _mark_parents(sections)
    return sections


def _mark_parents(sections: list[_Section]) -> None:
    """A heading followed directly by a deeper heading is carried by its children's heading paths."""
    for current, following in itertools.pairwise(sections):
        current.has_subsections = (
            len(following.heading_path) > len(current.heading_path)
            and following.heading_path[: len(current.heading_path)] == current.heading_path
        )


def _clean_inline(line: str) -> str:
    """Links and images keep their words, not their URLs: URLs are noise to a text embedder."""
    return _IMAGE_OR_LINK.sub(r"\1", line)


def _chunk_sections(sections: list[_Section], size: int, overlap: int) -> list[ExtractedItem]:
    items: list[ExtractedItem] = []
    for section in sections:
        # The nearest two headings ("People > Astronaut"): the document title on every chunk would eat the
        # word budget of all of them.
        prefix = HEADING_SEPARATOR.join(section.heading_path[-_PREFIX_HEADINGS:])
        full_path = HEADING_SEPARATOR.join(section.heading_path)
        if not section.words:
            # A heading alone is still worth finding, unless its subsections already carry it.
            if prefix and not section.has_subsections:
                items.append(_chunk_item(prefix, len(items), section.heading_line, full_path))
            continue
        # The heading counts against the word budget so a chunk still fits the text encoder.
        body_size = max(size - len(prefix.split()), max(1, size // 2))
        body_overlap = min(overlap, body_size - 1)
        for window in word_windows(len(section.words), body_size, body_overlap):
            body = " ".join(section.words[window.start : window.stop])
            text = f"{prefix}\n{body}" if prefix else body
            items.append(_chunk_item(text, len(items), section.word_lines[window.start], full_path))
    return items


def _chunk_item(text: str, index: int, line: int, section: str) -> ExtractedItem:
    meta: dict[str, object] = {"chunk": index, "line": line}
    if section:
        meta["section"] = section
    return ExtractedItem(modality=Modality.TEXT, content_hash=sha256_text(text), text=text, meta=meta)
