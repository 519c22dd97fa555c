"""Ingest as stages with plain data between them; runners (mmrag.ingest.runners) only schedule them.

    plan        walk the roots (folders, files, s3:// prefixes), sniff each file, compare it with the
                database: FileTask (to extract) or FileOutcome (unchanged, unsupported, skipped); in
                mmrag.ingest.plan
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrag.blobs import BlobStore, is_s3_url, thumbnail_key
from mmrag.collection import Collection, NewItem
from mmrag.errors import ExtractionError
from mmrag.ingest.dedup import fingerprint_meta
from mmrag.ingest.discover import (
    hash_file,
    printable_path,
)
from mmrag.ingest.images import extract_image_file, fit_for_model, make_thumbnail, thumbnail_format
from mmrag.ingest.items import ExtractedItem, FileKind, Modality
from mmrag.ingest.plan import (
    FileOutcome,
    FileTask,
    SourceFile,
)
from mmrag.ingest.text import chunkings_for, extract_text_file
from mmrag.ingest.vectorise import PendingItem
from mmrag.settings import S3Settings, Settings
from mmrag.store.duplicates import DuplicateGrouper

log = logging.getLogger(__name__)


# ---- what extract hands commit (the plan's own data is in mmrag.ingest.plan) -----------------------------


@dataclass
class FileExtracted:
    """Ends a file's items: its content hash, and why it failed, or that its bytes are those indexed."""

    content_hash: str
    error: str | None = None
    unchanged: bool = False


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
