"""The plan stage: walk the roots (folders, files, s3:// prefixes), sniff each file and compare it with
what the database holds: a FileTask (to extract) or, when it needs no work, a FileOutcome (unchanged,
unsupported, skipped). Also the plain data the stages and runners report with.

No database and no model here, and nothing heavy imported: an `mmrag index` that finds nothing changed
plans without loading SQLAlchemy (mmrag.quick), as the full path does with the collection's lookups.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmrag.blobs import is_s3_url
from mmrag.ingest.discover import DiscoveredFile, SkippedFile, discover, path_bytes_if_escaped, printable_path
from mmrag.ingest.items import FileKind
from mmrag.settings import IngestSettings, Settings


class ExistingDocument(Protocol):
    """What the plan reads of a Document row (an ORM row, or mmrag.store.quick's plain one)."""

    id: int
    status: str
    error: str | None
    size: int
    mtime: float
    content_hash: str


ExistingLookup = Callable[[Sequence[str]], Mapping[str, ExistingDocument]]  # paths -> their indexed rows


@dataclass
class FileOutcome:
    path: str  # printable (mmrag.ingest.discover.printable_path) or s3:// URL: the key of its Document row
    status: str  # indexed | unchanged | failed | unsupported
    items: int = 0
    reason: str | None = None


@dataclass
class IndexReport:
    indexed: int = 0
    unchanged: int = 0
    unsupported: int = 0
    items: int = 0
    pruned: int = 0
    failed: list[FileOutcome] = field(default_factory=list)
    unsupported_files: list[FileOutcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def add(self, outcome: FileOutcome) -> None:
        if outcome.status == "indexed":
            self.indexed += 1
            self.items += outcome.items
        elif outcome.status == "unchanged":
            self.unchanged += 1
        elif outcome.status == "unsupported":
            self.unsupported += 1
            self.unsupported_files.append(outcome)
        else:
            self.failed.append(outcome)


class ProgressSink(Protocol):
    def start(self, total_files: int) -> None: ...
    def items_embedded(self, count: int) -> None:
        """`count` more items have their vectors (reported as batches finish, before their files commit)."""

    def file_done(self, outcome: FileOutcome) -> None: ...


class NoProgress:
    """A ProgressSink that ignores everything; subclass it to hear only some events."""

    def start(self, total_files: int) -> None:
        pass

    def items_embedded(self, count: int) -> None:
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        pass


@dataclass(frozen=True)
class SourceFile:
    """A file to index, on this machine or in S3."""

    path: str  # printable path, or the s3:// URL: the document's key
    source: str  # what to open: the local path (as the file system spells it) or the s3:// URL
    kind: FileKind
    size: int
    mtime: float
    path_bytes: bytes | None = None  # the file system's bytes, for a name that is not UTF-8

    @property
    def remote(self) -> bool:
        return is_s3_url(self.source)

    @classmethod
    def local(cls, found: DiscoveredFile) -> SourceFile:
        return cls(
            path=printable_path(found.path),
            source=os.fspath(found.path),
            kind=found.kind,
            size=found.size,
            mtime=found.mtime,
            path_bytes=path_bytes_if_escaped(found.path),
        )


@dataclass(frozen=True)
class FileTask:
    """A file the plan found new or changed (by size or mtime): extract it."""

    file: SourceFile
    previous_hash: str | None = None  # content hash of its intact indexed version: same bytes = unchanged
    previous_id: int | None = None  # that version's document id


def plan(
    roots: Sequence[Path | str],
    settings: Settings,
    existing: ExistingLookup,
) -> Iterator[FileTask | FileOutcome]:
    """Every file under `roots` in walk order, as a FileTask or, when it needs no work, its outcome.
    `existing(paths)` gives the document rows of those paths that are indexed; it is asked for a batch of
    walked files at a time (one query for a batch, not one per file: a re-run over 100,000 unchanged files
    is then a walk, not 100,000 round trips). Every root is checked before the walk starts."""
    ingest = settings.ingest
    limits = {FileKind.TEXT: ingest.max_text_bytes}
    local = [Path(r) for r in roots if not is_s3_url(r)]
    remote = [str(r) for r in roots if is_s3_url(r)]
    if remote:
        from mmrag.ingest.remote import check_s3_root

        for url in remote:
            check_s3_root(url, settings.blobs.s3)
    walks: list[Iterator[Any]] = []
    for root in roots:
        if is_s3_url(root):
            from mmrag.ingest.remote import discover_s3

            walks.append(discover_s3(str(root), ingest, settings.blobs.s3))
        else:
            walks.append(_local_files(Path(root), ingest, limits))
    if local:
        discover(local, ingest.max_file_bytes, limits)  # checks the local roots now, before any walk
    seen: set[str] = set()
    batch: list[SourceFile | FileOutcome] = []  # walk order kept: skipped files wait with the others
    for walk in walks:
        for entry in walk:
            if isinstance(entry, SourceFile):
                if entry.path in seen:  # overlapping roots: once, under the first
                    continue
                seen.add(entry.path)
            batch.append(entry)
            if len(batch) == _PLAN_BATCH:
                yield from _tasks_or_unchanged(batch, existing)
                batch = []
    yield from _tasks_or_unchanged(batch, existing)


_PLAN_BATCH = 500  # walked files looked up in the database together


def _tasks_or_unchanged(
    entries: Sequence[SourceFile | FileOutcome], existing: ExistingLookup
) -> Iterator[FileTask | FileOutcome]:
    files = [entry.path for entry in entries if isinstance(entry, SourceFile)]
    docs = existing(files) if files else {}
    for entry in entries:
        yield entry if isinstance(entry, FileOutcome) else _task_or_unchanged(entry, docs.get(entry.path))


def _local_files(root: Path, ingest: IngestSettings, limits: Mapping[FileKind, int]) -> Iterator[Any]:
    for entry in discover([root], ingest.max_file_bytes, limits):
        if isinstance(entry, SkippedFile):
            status = "unsupported" if entry.unsupported else "failed"
            yield FileOutcome(printable_path(entry.path), status, reason=entry.reason)
        else:
            yield SourceFile.local(entry)


def _task_or_unchanged(file: SourceFile, doc: ExistingDocument | None) -> FileTask | FileOutcome:
    intact = doc is not None and doc.status == "indexed" and doc.error is None
    if not intact:
        return FileTask(file)
    assert doc is not None
    if doc.size == file.size and doc.mtime == file.mtime:
        return FileOutcome(file.path, "unchanged")  # rclip's rule: same size and mtime, no need to hash
    return FileTask(file, previous_hash=doc.content_hash, previous_id=doc.id)


def walked_paths(entries: Iterable[FileTask | FileOutcome]) -> set[str]:
    return {e.file.path if isinstance(e, FileTask) else e.path for e in entries}
