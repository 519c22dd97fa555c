"""Ingest: discover files -> skip unchanged -> extract items -> embed in batches -> store and index.

Files are committed one transaction each, only once all their items are embedded, so a crash or Ctrl-C
never leaves half a document; embedding batches span files, so a folder of small photos still fills the
model's batch, and every file a batch completes is committed right after it (a long file that follows
them does not hold them back).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mmrag.collection import Collection, NewItem
from mmrag.errors import ExtractionError, MmragError
from mmrag.ingest.dedup import fingerprint_meta
from mmrag.ingest.discover import (
    DiscoveredFile,
    SkippedFile,
    discover,
    hash_file,
    path_bytes_if_escaped,
    printable_path,
)
from mmrag.ingest.images import extract_image_file, fit_for_model, make_thumbnail
from mmrag.ingest.items import ExtractedItem, FileKind, Modality
from mmrag.ingest.text import chunkings_for, extract_text_file
from mmrag.ingest.vectorise import PendingItem, Vectoriser
from mmrag.settings import Settings
from mmrag.store.duplicates import DuplicateGrouper

log = logging.getLogger(__name__)


@dataclass
class FileOutcome:
    path: str  # printable (mmrag.ingest.discover.printable_path): the key of the file's Document row
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


@dataclass
class _PendingDoc:
    file: DiscoveredFile
    content_hash: str
    items: list[PendingItem] = field(default_factory=list)
    error: str | None = None  # set when embedding this file failed

    @property
    def path(self) -> str:
        return printable_path(self.file.path)

    @property
    def complete(self) -> bool:
        return self.error is not None or all(item.done for item in self.items)


class Indexer:
    def __init__(
        self,
        settings: Settings,
        collection: Collection,
        vectoriser: Vectoriser,
        document_meta: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.collection = collection
        self.vectoriser = vectoriser
        self.document_meta = document_meta or {}  # resolved path -> metadata stored with its document
        self.batch_size = settings.models.batch_size
        self._pending: list[_PendingDoc] = []
        # near-duplicate groups grow as documents commit (one reading of the collection's groups per run)
        self._duplicates = DuplicateGrouper(collection.db, collection.name)

    # ---- the run --------------------------------------------------------------------------------------

    def run(
        self, roots: Sequence[Path], prune: bool = False, progress: ProgressSink | None = None
    ) -> IndexReport:
        self._progress = progress = progress or NoProgress()
        self._report = report = IndexReport()
        ingest = self.settings.ingest
        found = list(discover(roots, ingest.max_file_bytes, {FileKind.TEXT: ingest.max_text_bytes}))
        seen = {printable_path(f.path) for f in found}
        progress.start(len(found))
        self._since_save = 0
        try:
            for entry in found:
                if isinstance(entry, SkippedFile):
                    self._finish(self._skipped(entry))
                    continue
                outcome = self._ingest_file(entry)
                if outcome is not None:
                    self._finish(outcome)
                if self._pending_load() >= self.batch_size or len(self._pending) >= 64:
                    self._flush()
            self._flush()
            if prune:
                report.pruned = self._prune(roots, seen)
            self.collection.optimise()  # flat below index.ivf_min_items items, IVF above
        except KeyboardInterrupt:
            report.interrupted = True  # pending, uncommitted files are dropped: the next run redoes them
            self._pending.clear()
        finally:
            self.collection.save()
        return report

    def _finish(self, outcome: FileOutcome) -> None:
        report = self._report
        if outcome.status == "indexed":
            report.indexed += 1
            report.items += outcome.items
        elif outcome.status == "unchanged":
            report.unchanged += 1
        elif outcome.status == "unsupported":
            report.unsupported += 1
            report.unsupported_files.append(outcome)
        else:
            report.failed.append(outcome)
        self._progress.file_done(outcome)

    def _skipped(self, entry: SkippedFile) -> FileOutcome:
        status = "unsupported" if entry.unsupported else "failed"
        return FileOutcome(printable_path(entry.path), status, reason=entry.reason)

    # ---- one file -------------------------------------------------------------------------------------

    def _ingest_file(self, file: DiscoveredFile) -> FileOutcome | None:
        """Extract a file into the pending batch; returns an outcome now only if it needs no embedding."""
        path = printable_path(file.path)
        existing = self.collection.document_by_path(path)
        intact = existing is not None and existing.status == "indexed" and existing.error is None
        if intact and existing.size == file.size and existing.mtime == file.mtime:  # type: ignore[union-attr]
            return FileOutcome(path, "unchanged")  # rclip's rule: same size and mtime, no need to hash
        try:
            content_hash = hash_file(file.path)
        except OSError as exc:
            return self._fail(file, "", f"unreadable: {exc.strerror or exc}")
        if intact and existing.content_hash == content_hash:  # type: ignore[union-attr]
            self.collection.touch_document(existing.id, file.mtime)  # type: ignore[union-attr]
            return FileOutcome(path, "unchanged")
        doc = _PendingDoc(file, content_hash)
        try:
            for extracted in self._extract(file):
                doc.items.append(self._prepare(extracted))
                if self._pending_load(doc) >= self.batch_size:
                    self._vectorise([*self._pending, doc])
                    self._commit_complete()  # files this batch completed do not wait for this one
        except ExtractionError as exc:
            return self._fail(file, content_hash, str(exc))
        except (OSError, MemoryError, ValueError, RuntimeError) as exc:  # library errors on hostile input
            return self._fail(file, content_hash, f"{type(exc).__name__}: {exc}")
        if not doc.items:
            return self._fail(file, content_hash, "no content: nothing to index in this file")
        self._pending.append(doc)
        return None

    def _extract(self, file: DiscoveredFile) -> Iterable[ExtractedItem]:
        ingest = self.settings.ingest
        if file.kind is FileKind.IMAGE:
            return extract_image_file(file.path, ingest)
        chunkings = chunkings_for(ingest, self.settings.spaces)
        if file.kind is FileKind.PDF:
            from mmrag.ingest.pdf import extract_pdf  # PyMuPDF loads in ~1 s: only when there is a PDF

            return extract_pdf(file.path, ingest, chunkings)
        return extract_text_file(file.path, ingest, chunkings)

    def _prepare(self, extracted: ExtractedItem) -> PendingItem:
        thumbnail = None
        if extracted.image is not None:
            thumbnail = self._write_thumbnail(extracted)
            if extracted.modality is Modality.IMAGE:  # before resizing: every copy is read at full size
                extracted.meta.update(fingerprint_meta(extracted.image))
            extracted.image = fit_for_model(extracted.image)
        return PendingItem(extracted, thumbnail)

    def _write_thumbnail(self, extracted: ExtractedItem) -> str:
        assert extracted.image is not None
        relative = Path("thumbnails") / extracted.content_hash[:2] / f"{extracted.content_hash}.webp"
        target = self.settings.data_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(make_thumbnail(extracted.image, self.settings.ingest.thumbnail_size))
            os.replace(tmp, target)
        return str(relative)

    def _fail(self, file: DiscoveredFile, content_hash: str, reason: str) -> FileOutcome:
        path = printable_path(file.path)
        self.collection.record_failure(
            path=path,
            path_bytes=path_bytes_if_escaped(file.path),
            kind=file.kind.value,
            content_hash=content_hash,
            size=file.size,
            mtime=file.mtime,
            error=reason,
        )
        return FileOutcome(path, "failed", reason=reason)

    # ---- batching -------------------------------------------------------------------------------------

    def _pending_load(self, *extra: _PendingDoc) -> int:
        """Items still waiting for a vector; texts are cheap, so four count as one image."""
        images = texts = 0
        for doc in [*self._pending, *extra]:
            for item in doc.items:
                if not item.done:
                    if item.extracted.image is not None:
                        images += 1
                    else:
                        texts += 1
        return images + texts // 4

    def _vectorise(self, docs: Sequence[_PendingDoc]) -> None:
        """Embed a batch; if the batch fails, retry file by file so that only the file at fault fails.
        Errors of ours (a misconfigured model or captioner) concern every file and stop the run."""
        waiting = sum(1 for doc in docs if doc.error is None for it in doc.items if not it.done)
        try:
            self.vectoriser.run([it for doc in docs if doc.error is None for it in doc.items])
        except MmragError:
            raise
        except Exception:
            for doc in docs:
                if doc.error is not None:
                    continue
                try:
                    todo = sum(1 for it in doc.items if not it.done)
                    self.vectoriser.run(doc.items)
                    self._progress.items_embedded(todo)
                except MmragError:
                    raise
                except Exception as exc:  # the model choked on something in this file
                    log.warning("embedding failed for %s", doc.path, exc_info=True)
                    doc.error = f"embedding failed: {type(exc).__name__}: {exc}"
        else:
            self._progress.items_embedded(waiting)

    def _flush(self) -> None:
        """Embed everything pending, then commit each document."""
        if self._pending:
            self._vectorise(self._pending)
            self._commit_complete()

    def _commit_complete(self) -> None:
        """Commit (or fail) every pending document whose items all have their vectors, in the order the
        files came; the others stay pending."""
        still: list[_PendingDoc] = []
        for doc in self._pending:
            if doc.complete:
                self._finish(self._commit(doc))
            else:
                still.append(doc)
        self._pending = still
        if self._since_save >= self.settings.ingest.save_every_files:
            self.collection.save()
            self._since_save = 0

    def _commit(self, doc: _PendingDoc) -> FileOutcome:
        if doc.error is not None:
            return self._fail(doc.file, doc.content_hash, doc.error)
        items = [_to_new_item(it) for it in doc.items if it.vectors]
        if not items:  # e.g. caption road only, and the captioner failed on every image
            reasons = {it.extracted.meta.get("caption_error") for it in doc.items} - {None}
            why = "; ".join(sorted(reasons)) or "nothing could be embedded"
            return self._fail(doc.file, doc.content_hash, f"no item indexed: {why}")
        if len(items) < len(doc.items):
            log.warning(
                "%s: %d of %d items could not be embedded",
                doc.path,
                len(doc.items) - len(items),
                len(doc.items),
            )
        doc_id = self.collection.replace_document(
            path=doc.path,
            path_bytes=path_bytes_if_escaped(doc.file.path),
            kind=doc.file.kind.value,
            content_hash=doc.content_hash,
            size=doc.file.size,
            mtime=doc.file.mtime,
            items=items,
            meta=self.document_meta.get(doc.path),
        )
        self._duplicates.assign_document(doc_id)
        self._since_save += 1
        return FileOutcome(doc.path, "indexed", items=len(items))

    # ---- prune ----------------------------------------------------------------------------------------

    def _prune(self, roots: Sequence[Path], seen: set[str]) -> int:
        """Remove documents under the given roots whose files were not found in this walk."""
        prefixes = [printable_path(Path(r).resolve()) for r in roots]
        gone = [
            doc.id
            for doc in self.collection.documents()
            if doc.path not in seen and any(_is_under(doc.path, p) for p in prefixes)
        ]
        return self.collection.delete_documents(gone)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _to_new_item(it: PendingItem) -> NewItem:
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
