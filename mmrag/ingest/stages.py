"""Ingest as stages with plain data between them; runners (mmrag.ingest.runners) only schedule them.

    plan        walk the roots (folders, files, s3:// prefixes), sniff each file, compare it with the
                database: FileTask (to extract) or FileOutcome (unchanged, unsupported, skipped)
    extract     FileTask -> its items (PendingItem: pixels fitted for the models, thumbnail written to the
                blob store), then a FileExtracted that ends the file. Pure: no database, so it runs in any
                thread or on any machine. A file whose bytes are those of its indexed version ends at once,
                as unchanged.
    vectorise   batches of items -> one vector per space (mmrag.ingest.vectorise; its models never touch the
                database: caption cache lookups happen before, new captions are stored after)
    commit      one writer: one transaction per file (Collection.replace_document / record_failure), then
                the vector store

The local runner runs extract on a few threads while the models run; the Ray runner runs extract as tasks
and each model in an actor pool, and commits on the driver. Both end with the same rows.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmrag.blobs import BlobStore, is_s3_url, thumbnail_key
from mmrag.collection import Collection, NewItem
from mmrag.errors import ExtractionError
from mmrag.ingest.dedup import fingerprint_meta
from mmrag.ingest.discover import (
    DiscoveredFile,
    SkippedFile,
    discover,
    hash_file,
    path_bytes_if_escaped,
    printable_path,
)
from mmrag.ingest.images import extract_image_file, fit_for_model, make_thumbnail, thumbnail_format
from mmrag.ingest.items import ExtractedItem, FileKind, Modality
from mmrag.ingest.text import chunkings_for, extract_text_file
from mmrag.ingest.vectorise import PendingItem
from mmrag.settings import IngestSettings, S3Settings, Settings
from mmrag.store.duplicates import DuplicateGrouper
from mmrag.store.models import Document

log = logging.getLogger(__name__)


# ---- what the stages hand each other ---------------------------------------------------------------------


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


@dataclass
class FileExtracted:
    """Ends a file's items: its content hash, and why it failed, or that its bytes are those indexed."""

    content_hash: str
    error: str | None = None
    unchanged: bool = False


# ---- plan -----------------------------------------------------------------------------------------------


def plan(
    roots: Sequence[Path | str],
    settings: Settings,
    existing: Callable[[Sequence[str]], Mapping[str, Document]],
) -> Iterator[FileTask | FileOutcome]:
    """Every file under `roots` in walk order, as a FileTask or, when it needs no work, its outcome.
    `existing(paths)` gives the Document rows of those paths that are indexed; it is asked for a batch of
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
    entries: Sequence[SourceFile | FileOutcome], existing: Callable[[Sequence[str]], Mapping[str, Document]]
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


def _task_or_unchanged(file: SourceFile, doc: Document | None) -> FileTask | FileOutcome:
    intact = doc is not None and doc.status == "indexed" and doc.error is None
    if not intact:
        return FileTask(file)
    assert doc is not None
    if doc.size == file.size and doc.mtime == file.mtime:
        return FileOutcome(file.path, "unchanged")  # rclip's rule: same size and mtime, no need to hash
    return FileTask(file, previous_hash=doc.content_hash, previous_id=doc.id)


def walked_paths(entries: Iterable[FileTask | FileOutcome]) -> set[str]:
    return {e.file.path if isinstance(e, FileTask) else e.path for e in entries}


# ---- extract --------------------------------------------------------------------------------------------


def extract(task: FileTask, settings: Settings, blobs: BlobStore) -> Iterator[PendingItem | FileExtracted]:
    """The file's items, lazily (a PDF page at a time), then one FileExtracted. Never raises for a bad
    file: its failure is the FileExtracted's error."""
    ingest = settings.ingest
    try:
        with _local_copy(task.file, settings.blobs.s3) as path:
            try:
                content_hash = hash_file(path)
            except ExtractionError as exc:
                yield FileExtracted("", str(exc))
                return
            if content_hash == task.previous_hash:
                yield FileExtracted(content_hash, unchanged=True)
                return
            count = 0
            try:
                for extracted in _items(path, task.file.kind, settings):
                    yield prepare_item(extracted, blobs, ingest.thumbnail_size)
                    count += 1
            except ExtractionError as exc:
                yield FileExtracted(content_hash, str(exc))
                return
            except (OSError, MemoryError, ValueError, RuntimeError) as exc:  # library errors on hostile input
                yield FileExtracted(content_hash, f"{type(exc).__name__}: {exc}")
                return
            if not count:
                yield FileExtracted(content_hash, "no content: nothing to index in this file")
                return
            yield FileExtracted(content_hash)
    except ExtractionError as exc:  # a remote file that cannot be fetched
        yield FileExtracted("", str(exc))


def _items(path: Path, kind: FileKind, settings: Settings) -> Iterable[ExtractedItem]:
    ingest = settings.ingest
    if kind is FileKind.IMAGE:
        return extract_image_file(path, ingest)
    chunkings = chunkings_for(ingest, settings.spaces)
    if kind is FileKind.PDF:
        from mmrag.ingest.pdf import extract_pdf  # PyMuPDF loads in ~1 s: only when there is a PDF

        return extract_pdf(path, ingest, chunkings)
    return extract_text_file(path, ingest, chunkings)


def prepare_item(extracted: ExtractedItem, blobs: BlobStore, thumbnail_size: int) -> PendingItem:
    """A thumbnail in the blob store, an image's near-duplicate fingerprint, and pixels bounded for every
    model (fit_for_model)."""
    thumbnail = None
    if extracted.image is not None:
        thumbnail = thumbnail_key(extracted.content_hash, thumbnail_format())
        image = extracted.image
        blobs.ensure(thumbnail, lambda: make_thumbnail(image, thumbnail_size))
        if extracted.modality is Modality.IMAGE:  # before resizing: every copy is read at full size
            extracted.meta.update(fingerprint_meta(extracted.image))
        extracted.image = fit_for_model(extracted.image)
    return PendingItem(extracted, thumbnail)


@contextmanager
def _local_copy(file: SourceFile, s3: S3Settings | None) -> Iterator[Path]:
    """The file itself, or a temporary copy of an S3 object (kept while its items are read)."""
    if not file.remote:
        yield Path(file.source)
        return
    from mmrag.ingest.remote import download

    with tempfile.TemporaryDirectory(prefix="mmrag-s3-") as folder:
        target = Path(folder) / (file.source.rsplit("/", 1)[-1] or "object")
        download(file.source, target, s3 or S3Settings())
        yield target


# ---- commit ---------------------------------------------------------------------------------------------


def commit(
    collection: Collection,
    task: FileTask,
    ended: FileExtracted,
    items: Sequence[PendingItem],
    meta: Mapping[str, Any] | None = None,
    error: str | None = None,
    duplicates: DuplicateGrouper | None = None,
) -> FileOutcome:
    """Store one file: its items in one transaction, or its failure (an earlier good version keeps its
    items), or, when its bytes are those indexed, its new mtime. `error`: vectorising failed. `duplicates`
    (one per run) puts the file's images into near-duplicate groups as it commits."""
    file = task.file
    if ended.unchanged:
        if task.previous_id is not None:
            collection.touch_document(task.previous_id, file.mtime)
        return FileOutcome(file.path, "unchanged")
    error = ended.error or error
    if error is not None:
        return record_failure(collection, file, ended.content_hash, error)
    new_items = [to_new_item(it) for it in items if it.vectors]
    if not new_items:  # e.g. caption road only, and the captioner failed on every image
        reasons = {it.extracted.meta.get("caption_error") for it in items} - {None}
        why = "; ".join(sorted(reasons)) or "nothing could be embedded"
        return record_failure(collection, file, ended.content_hash, f"no item indexed: {why}")
    if len(new_items) < len(items):
        log.warning(
            "%s: %d of %d items could not be embedded", file.path, len(items) - len(new_items), len(items)
        )
    doc_id = collection.replace_document(
        path=file.path,
        path_bytes=file.path_bytes,
        kind=file.kind.value,
        content_hash=ended.content_hash,
        size=file.size,
        mtime=file.mtime,
        items=new_items,
        meta=dict(meta) if meta is not None else None,
    )
    if duplicates is not None:
        duplicates.assign_document(doc_id)
    return FileOutcome(file.path, "indexed", items=len(new_items))


def record_failure(collection: Collection, file: SourceFile, content_hash: str, reason: str) -> FileOutcome:
    collection.record_failure(
        path=file.path,
        path_bytes=file.path_bytes,
        kind=file.kind.value,
        content_hash=content_hash,
        size=file.size,
        mtime=file.mtime,
        error=reason,
    )
    return FileOutcome(file.path, "failed", reason=reason)


def to_new_item(it: PendingItem) -> NewItem:
    ex = it.extracted
    return NewItem(
        modality=ex.modality.value if isinstance(ex.modality, Modality) else str(ex.modality),
        content_hash=ex.content_hash,
        page=ex.page,
        bbox=[float(v) for v in ex.bbox] if ex.bbox is not None else None,
        text=ex.text,
        thumbnail=it.thumbnail,
        meta=ex.meta,
        vectors=dict(it.vectors),
    )


def prune(collection: Collection, roots: Sequence[Path | str], seen: set[str]) -> int:
    """Remove documents under the given roots whose files were not found in this walk."""
    prefixes = [str(root) if is_s3_url(root) else printable_path(Path(root).resolve()) for root in roots]
    gone = [
        doc.id
        for doc in collection.documents()
        if doc.path not in seen and any(is_under(doc.path, p) for p in prefixes)
    ]
    return collection.delete_documents(gone)


def is_under(path: str, root: str) -> bool:
    """`path` is `root` or lies below it (a printable local path, or an s3:// URL)."""
    if is_s3_url(root):
        return path == root or path.startswith(root.rstrip("/") + "/")
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
