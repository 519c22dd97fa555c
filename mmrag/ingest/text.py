"""Plain-text and Markdown files -> word-window chunks that remember the line they start on.

Chunks are sized in words, per embedding space: CLIP's text tower reads 77 tokens, so ingest.chunk_words
(~48) words fit; the text space's all-MiniLM-L6-v2 reads 256 word pieces, ingest.text_chunk_words (~160).
With both spaces active and different sizes, text is chunked twice, each chunking embedded in its own space
(`Chunking`, `chunkings_for`).
Markdown is split on headings first so a chunk never straddles two sections, and every chunk starts with the
nearest headings of its section ("Guide > Install"), which is often the best retrieval cue a paragraph has.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import ExtractionError
from mmrag.ingest.items import ExtractedItem, Modality, sha256_text
from mmrag.settings import IngestSettings, SpacesSettings

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
HEADING_SEPARATOR = " > "
_PREFIX_HEADINGS = 2

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_LIST_OR_QUOTE = re.compile(r"^ {0,3}([-*+>]|\d+[.)])(\s|$)")
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


SPACES_KEY = "spaces"  # item meta: the spaces a chunk is embedded in, when not every active one


@dataclass(frozen=True)
class Chunking:
    """One way to cut text: window size and overlap in words, and the spaces its chunks are embedded in
    (None: every active space)."""

    words: int
    overlap: int
    spaces: tuple[str, ...] | None = None

    def meta(self, meta: dict[str, object]) -> dict[str, object]:
        if self.spaces is not None:
            meta[SPACES_KEY] = list(self.spaces)
        return meta


def default_chunkings(ingest: IngestSettings) -> list[Chunking]:
    """One chunking of ingest.chunk_words for every space (extraction called without the spaces known)."""
    return [Chunking(ingest.chunk_words, ingest.chunk_overlap_words)]


def chunkings_for(ingest: IngestSettings, spaces: SpacesSettings) -> list[Chunking]:
    """How text is cut for the active spaces: CLIP's chunks (ingest.chunk_words) and the text space's
    (ingest.text_chunk_words); one chunking for both when only one space is active or the sizes agree."""
    clip = Chunking(ingest.chunk_words, ingest.chunk_overlap_words)
    text = Chunking(ingest.text_chunk_words, ingest.text_chunk_overlap_words)
    if not spaces.text:
        return [clip]
    if not spaces.clip or clip == text:
        return [text]
    return [Chunking(clip.words, clip.overlap, ("clip",)), Chunking(text.words, text.overlap, ("text",))]


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


# A file is read in blocks of this size, and a line longer than it is cut at a space: memory stays bounded
# whatever the file holds (one 200 MB line, for instance).
_READ_BLOCK = 1 << 16


@dataclass
class _Words:
    """Words of the current section, from one line."""

    words: list[str]
    line: int


@dataclass
class _Heading:
    """A new section starts: its heading path ("Guide", "Install") and the line of its heading."""

    path: tuple[str, ...]
    line: int


def decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is dropped), else latin-1, which never fails; newlines normalised to \\n."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def extract_text_file(
    path: Path, settings: IngestSettings, chunkings: Sequence[Chunking] | None = None
) -> Iterator[ExtractedItem]:
    """Chunks of a .txt/.md/.rst file, lazily: the file is streamed (once per chunking), so memory does not
    grow with its size. An empty or whitespace-only file gives no chunks."""
    codec = _text_codec(path)  # here, not lazily: an unreadable file fails at the call
    return _chunked_file(path, codec, list(chunkings or default_chunkings(settings)))


def _chunked_file(path: Path, codec: str, chunkings: list[Chunking]) -> Iterator[ExtractedItem]:
    markdown = path.suffix.lower() in MARKDOWN_SUFFIXES
    for chunking in chunkings:
        lines = _read_lines(path, codec)
        events = _markdown_events(lines) if markdown else _plain_events(lines)
        for item in _chunk_events(events, chunking.words, chunking.overlap):
            chunking.meta(item.meta)
            yield item


def _text_codec(path: Path) -> str:
    """utf-8-sig when the whole file is valid UTF-8 (checked in one streaming pass), else latin-1."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_READ_BLOCK):
                decoder.decode(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "latin-1"
    except OSError as exc:
        raise ExtractionError(f"cannot read text file {path}: {exc.strerror or exc}") from exc
    return "utf-8-sig"


def _read_lines(path: Path, codec: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) with \\r\\n and \\r as line ends; a line longer than the read block comes
    in pieces cut at spaces, all with its line number."""
    decoder = codecs.getincrementaldecoder(codec)()
    pending = ""
    number = 1
    try:
        with open(path, "rb") as handle:
            while True:
                block = handle.read(_READ_BLOCK)
                pending += decoder.decode(block, final=not block)
                if block and pending.endswith("\r"):
                    continue  # "\r\n" may be split across blocks
                pending = pending.replace("\r\n", "\n").replace("\r", "\n")
                *complete, pending = pending.split("\n")
                for line in complete:
                    yield number, line
                    number += 1
                if not block:
                    break
                while len(pending) > _READ_BLOCK:
                    cut = pending.rfind(" ", 0, _READ_BLOCK)
                    cut = cut if cut > 0 else _READ_BLOCK
                    yield number, pending[:cut]
                    pending = pending[cut:]
    except OSError as exc:
        raise ExtractionError(f"cannot read text file {path}: {exc.strerror or exc}") from exc
    if pending:
        yield number, pending


def _plain_events(lines: Iterable[tuple[int, str]]) -> Iterator[_Words | _Heading]:
    for number, line in lines:
        words = line.split()
        if words:
            yield _Words(words, number)


def _markdown_events(lines: Iterable[tuple[int, str]]) -> Iterator[_Words | _Heading]:
    """Sections start at ATX (# Title) and setext (Title / =====) headings; '#' lines inside code fences
    are text. Reads one line ahead (a setext underline) and remembers one behind."""
    open_headings: dict[int, str] = {}  # level -> text of the heading open at that level
    fence: str | None = None
    previous = ""
    iterator = iter(lines)
    current = next(iterator, None)
    while current is not None:
        following = next(iterator, None)
        number, line = current
        next_line = following[1] if following is not None else ""
        fence_match = _FENCE.match(line)
        if fence is not None:
            if (
                fence_match
                and fence_match.group(1)[0] == fence[0]
                and len(fence_match.group(1)) >= len(fence)
            ):
                fence = None
            elif words := line.split():
                yield _Words(words, number)
        elif fence_match:
            fence = fence_match.group(1)
        elif atx := _ATX_HEADING.match(line):
            title = _clean_inline(atx.group(2) or "")
            if title:
                yield _open_heading(open_headings, len(atx.group(1)), title, number)
        elif (
            line.strip()
            and _SETEXT_UNDERLINE.match(next_line)
            and not _LIST_OR_QUOTE.match(line)
            and (not previous.strip() or _ATX_HEADING.match(previous))
        ):
            # Only a single-line paragraph is taken as a setext heading: a '---' under a longer paragraph
            # is ambiguous enough (thematic break in many writers' minds) to leave alone.
            level = 1 if next_line.strip().startswith("=") else 2
            yield _open_heading(open_headings, level, _clean_inline(line.strip()), number)
            following = next(iterator, None)  # the underline is markup, not words
            line = ""
        elif words := _clean_inline(line).split():
            yield _Words(words, number)
        previous = line
        current = following


def _open_heading(open_headings: dict[int, str], level: int, title: str, line: int) -> _Heading:
    for deeper in [lvl for lvl in open_headings if lvl >= level]:
        del open_headings[deeper]
    open_headings[level] = title
    return _Heading(tuple(open_headings[lvl] for lvl in sorted(open_headings)), line)


def _clean_inline(line: str) -> str:
    """Links and images keep their words, not their URLs: URLs are noise to a text embedder."""
    return _IMAGE_OR_LINK.sub(r"\1", line)


def _chunk_events(events: Iterable[_Words | _Heading], size: int, overlap: int) -> Iterator[ExtractedItem]:
    """Word windows within each section, each starting with its nearest headings, emitted as soon as they
    are full: only the current window's words are held."""
    state = _SectionChunker(size, overlap)
    for event in events:
        if isinstance(event, _Heading):
            yield from state.finish(next_heading=event)
            state.start(event)
        else:
            yield from state.add(event)
    yield from state.finish(next_heading=None)


class _SectionChunker:
    def __init__(self, size: int, overlap: int) -> None:
        self.size, self.overlap = size, overlap
        self.index = 0  # chunk number within the file
        self.start(_Heading((), 0))

    def start(self, heading: _Heading) -> None:
        self.heading = heading
        # The nearest two headings ("People > Astronaut"): the document title on every chunk would eat the
        # word budget of all of them. The heading counts against the budget so a chunk still fits the
        # text encoder.
        self.prefix = HEADING_SEPARATOR.join(heading.path[-_PREFIX_HEADINGS:])
        self.full_path = HEADING_SEPARATOR.join(heading.path)
        self.body_size = max(self.size - len(self.prefix.split()), max(1, self.size // 2))
        self.step = self.body_size - min(self.overlap, self.body_size - 1)
        self.window: list[tuple[str, int]] = []  # (word, line) of the window being filled
        self.covered = 0  # words at the window's start that an emitted chunk already holds
        self.any_words = False

    def add(self, event: _Words) -> Iterator[ExtractedItem]:
        self.any_words = True
        for word in event.words:
            self.window.append((word, event.line))
            if len(self.window) == self.body_size:
                yield self._emit()
                del self.window[: self.step]
                self.covered = len(self.window)

    def finish(self, next_heading: _Heading | None) -> Iterator[ExtractedItem]:
        if len(self.window) > self.covered:
            yield self._emit()
        elif not self.any_words and self.prefix:
            # A heading alone is still worth finding, unless its subsections already carry it.
            path = self.heading.path
            has_subsections = (
                next_heading is not None
                and len(next_heading.path) > len(path)
                and next_heading.path[: len(path)] == path
            )
            if not has_subsections:
                yield self._item(self.prefix, self.heading.line)

    def _emit(self) -> ExtractedItem:
        body = " ".join(word for word, _ in self.window)
        return self._item(f"{self.prefix}\n{body}" if self.prefix else body, self.window[0][1])

    def _item(self, text: str, line: int) -> ExtractedItem:
        item = _chunk_item(text, self.index, line, self.full_path)
        self.index += 1
        return item


def _chunk_item(text: str, index: int, line: int, section: str) -> ExtractedItem:
    meta: dict[str, object] = {"chunk": index, "line": line}
    if section:
        meta["section"] = section
    return ExtractedItem(modality=Modality.TEXT, content_hash=sha256_text(text), text=text, meta=meta)
