"""Query-relevance judgments ("qrels"): which indexed files or pages answer which query.

Format: JSON Lines, UTF-8, one query per line; blank lines are skipped. Each line is an object:

    {"id": "q1", "text": "a cat", "image": "queries/cat.jpg",
     "relevant": [{"path": "photos/chelsea.jpg"},
                  {"path": "docs/report.pdf", "page": 3, "grade": 2},
                  {"path": "notes.md"}]}

- "id" (string, required, unique in the file) names the query in reports.
- "text" (string) and/or "image" (path to an image file) form the query; at least one is required.
  A relative image path is read relative to the folder holding the qrels file.
- "relevant" (non-empty list, required): the items a good search returns. Each entry has
    - "path" (string, required): a file, relative or absolute;
    - "page" (integer >= 1, optional): only items on that 1-based page of the file match;
      without it, every item of the file matches (any chunk of a note, any page of a PDF);
    - "grade" (number > 0, optional, default 1): the gain for graded nDCG; higher is more relevant.
  No other keys are accepted, so a typo such as "pages" fails loudly instead of widening a match.

Matching a hit (its source path and page) to an entry: a relative entry path that exists under the qrels
file's folder is resolved to that absolute file first. The entry matches when the hit's path ends with the
entry's path, compared component by component ("photos/chelsea.jpg" matches "/data/photos/chelsea.jpg"
but not "/data/myphotos/chelsea.jpg"), and, when the entry gives a page, the hit is on that page. An entry
that does not exist under the qrels folder stays a suffix, so qrels can name files of an index built
elsewhere; keep such suffixes long enough to be unique.

Errors name the file, the line number and the problem (QrelsError, an MmragError).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath

from mmrag.errors import MmragError

__all__ = ["QrelsError", "Query", "RelevantItem", "load_qrels", "write_qrels"]

_QUERY_KEYS = frozenset({"id", "text", "image", "relevant"})
_ENTRY_KEYS = frozenset({"path", "page", "grade"})


class QrelsError(MmragError):
    """A qrels file that cannot be read: bad JSON, missing or mistyped fields, missing query images."""


@dataclass(frozen=True)
class RelevantItem:
    """One judged-relevant file, or one page of it."""

    path: str  # as written in the qrels file
    page: int | None = None
    grade: float = 1.0
    resolved: Path | None = None  # the absolute file, when `path` exists relative to the qrels folder

    def matches(self, hit_path: str, hit_page: int | None) -> bool:
        if self.page is not None and hit_page != self.page:
            return False
        wanted = _parts(str(self.resolved)) if self.resolved is not None else _parts(self.path)
        return any(_ends_with(candidate, wanted) for candidate in _hit_path_forms(hit_path))


@dataclass(frozen=True)
class Query:
    id: str
    text: str | None
    image: Path | None  # absolute
    relevant: tuple[RelevantItem, ...]
    line: int = 0  # where it was read from, for messages

    def match(self, hit_path: str, hit_page: int | None) -> int | None:
        """Index in `relevant` of the first entry the hit matches, or None."""
        for index, entry in enumerate(self.relevant):
            if entry.matches(hit_path, hit_page):
                return index
        return None

    def matching_entries(self, hit_path: str, hit_page: int | None) -> list[int]:
        """Indices of every entry the hit matches (a page entry and a whole-file entry can both match)."""
        return [i for i, entry in enumerate(self.relevant) if entry.matches(hit_path, hit_page)]


def load_qrels(path: Path | str) -> list[Query]:
    """Read and check a qrels file (format in this module's docstring)."""
    qrels_path = Path(path)
    try:
        text = qrels_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QrelsError(f"qrels file {qrels_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QrelsError(f"cannot read qrels file {qrels_path}: {exc}") from None
    base = qrels_path.resolve().parent
    queries: list[Query] = []
    first_line_of_id: dict[str, int] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        query = _parse_line(line, line_number, qrels_path, base)
        if query.id in first_line_of_id:
            raise QrelsError(
                f"{qrels_path} line {line_number}: query id {query.id!r} already used on line "
                f"{first_line_of_id[query.id]}"
            )
        first_line_of_id[query.id] = line_number
        queries.append(query)
    if not queries:
        raise QrelsError(f"qrels file {qrels_path} holds no queries")
    return queries


def write_qrels(path: Path, records: Iterable[Mapping[str, object]]) -> Path:
    """Write query records (dicts in the format above) as JSON Lines; returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dict(record), ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _parse_line(line: str, line_number: int, qrels_path: Path, base: Path) -> Query:
    where = f"{qrels_path} line {line_number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise QrelsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise QrelsError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _QUERY_KEYS)
    if unknown:
        raise QrelsError(f"{where}: unknown key(s) {unknown}; a query has {sorted(_QUERY_KEYS)}")

    query_id = record.get("id")
    if not isinstance(query_id, str) or not query_id.strip():
        raise QrelsError(f"{where}: 'id' must be a non-empty string")
    where = f"{where} (query {query_id!r})"

    text = record.get("text")
    if text is not None and not isinstance(text, str):
        raise QrelsError(f"{where}: 'text' must be a string")
    text = text if text and text.strip() else None
    image = _query_image(record.get("image"), base, where)
    if text is None and image is None:
        raise QrelsError(f"{where}: a query needs 'text', 'image', or both")

    relevant = record.get("relevant")
    if not isinstance(relevant, list) or not relevant:
        raise QrelsError(f"{where}: 'relevant' must be a non-empty list of {{'path': ...}} objects")
    entries = tuple(_parse_entry(entry, i, base, where) for i, entry in enumerate(relevant, start=1))
    seen: dict[tuple[str, int | None], int] = {}
    for i, entry in enumerate(entries, start=1):
        identity = (str(entry.resolved or os.path.normpath(entry.path)), entry.page)
        if identity in seen:
            raise QrelsError(f"{where}: relevant entry {i} repeats entry {seen[identity]} ({entry.path!r})")
        seen[identity] = i
    return Query(id=query_id, text=text, image=image, relevant=entries, line=line_number)


def _query_image(value: object, base: Path, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise QrelsError(f"{where}: 'image' must be a non-empty path string")
    image = Path(value) if Path(value).is_absolute() else base / value
    if not image.is_file():
        raise QrelsError(f"{where}: query image {value!r} not found (looked at {image})")
    return image.resolve()


def _parse_entry(entry: object, number: int, base: Path, where: str) -> RelevantItem:
    where = f"{where}, relevant entry {number}"
    if not isinstance(entry, dict):
        raise QrelsError(f"{where}: expected an object like {{'path': 'photos/cat.jpg'}}")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise QrelsError(f"{where}: unknown key(s) {unknown}; an entry has {sorted(_ENTRY_KEYS)}")
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        raise QrelsError(f"{where}: 'path' must be a non-empty string")
    page = entry.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int) or page < 1):
        raise QrelsError(f"{where}: 'page' must be an integer >= 1 (pages count from 1), got {page!r}")
    grade = entry.get("grade", 1)
    if (
        isinstance(grade, bool)
        or not isinstance(grade, (int, float))
        or not math.isfinite(grade)
        or grade <= 0
    ):
        raise QrelsError(f"{where}: 'grade' must be a number > 0, got {grade!r}")
    candidate = Path(path) if Path(path).is_absolute() else base / path
    resolved = candidate.resolve() if candidate.exists() else None
    return RelevantItem(path=path, page=page, grade=float(grade), resolved=resolved)


def _parts(path: str) -> tuple[str, ...]:
    return PurePath(os.path.normpath(path)).parts


def _ends_with(parts: tuple[str, ...], suffix: tuple[str, ...]) -> bool:
    return len(suffix) <= len(parts) and parts[len(parts) - len(suffix) :] == suffix


@functools.lru_cache(maxsize=65536)
def _hit_path_forms(hit_path: str) -> tuple[tuple[str, ...], ...]:
    # The index may have stored a path through a symlink (/tmp -> /private/tmp) that the qrels resolved.
    forms = [_parts(hit_path)]
    if os.path.isabs(hit_path):
        real = _parts(os.path.realpath(hit_path))
        if real != forms[0]:
            forms.append(real)
    return tuple(forms)
