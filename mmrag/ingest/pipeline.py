"""Ingest: discover files -> skip unchanged -> extract items -> embed in batches -> store and index.

Files are committed one transaction each, only once all their items are embedded, so a crash or Ctrl-C
never leaves half a document; embedding batches span files, so a folder of small photos still fills the
model's batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from mmrag.collection import Collection, NewItem
from mmrag.errors import ExtractionError, MmragError
from mmrag.ingest.discover import DiscoveredFile, SkippedFile, discover, hash_file
from mmrag.ingest.images import extract_image_file, make_thumbnail
from mmrag.ingest.items import ExtractedItem, FileKind, Modality
from mmrag.ingest.pdf import extract_pdf
from mmrag.ingest.text import extract_text_file
from mmrag.ingest.vectorise import PendingItem, Vectoriser
from mmrag.settings import Settings

log = logging.getLogger(__name__)

# Images wait for their batch at this size: enough for CLIP and VLMs, and bounded memory.
WORKING_IMAGE_SIDE = 1024
MAX_ASPECT = 8  # longer side / shorter side, after padding


@dataclass
class FileOutcome:
    path: str
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
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


class ProgressSink(Protocol):
    def start(self, total_files: int) -> None: ...
    def file_done(self, outcome: FileOutcome) -> None: ...


class _NoProgress:
    def start(self, total_files: int) -> None:
        pass

    def file_done(self, outcome: FileOutcome) -> None:
        pass


@dataclass
class _PendingDoc:
    file: DiscoveredFile
    content_hash: str
    items: list[PendingItem] = field(default_factory=list)
    error: str | None = None  # set when embedding this file failed


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

    # ---- the run --------------------------------------------------------------------------------------

    def run(
        self, roots: Sequence[Path], prune: bool = False, progress: ProgressSink | None = None
    ) -> IndexReport:
        progress = progress or _NoProgress()
        report = IndexReport()
        found = list(discover(roots, self.settings.ingest.max_file_bytes))
        seen = {str(f.path) for f in found}
        progress.start(len(found))
        since_save = 0
        try:
            for entry in found:
                if isinstance(entry, SkippedFile):
                    self._finish(report, progress, self._skipped(entry))
                    continue
                outcome = self._ingest_file(entry)
                if outcome is not None:
                    self._finish(report, progress, outcome)
                if self._pending_load() >= self.batch_size or len(self._pending) >= 64:
                    since_save += self._flush(report, progress)
                if since_save >= self.settings.ingest.save_every_files:
                    self.collection.save()
                    since_save = 0
            self._flush(report, progress)
            if prune:
                report.pruned = self._prune(roots, seen)
            self.collection.optimise()  # flat below index.ivf_min_items items, IVF above
        except KeyboardInterrupt:
            report.interrupted = True  # pending, uncommitted files are dropped: the next run redoes them
            self._pending.clear()
        finally:
            self.collection.save()
        return report

    def _finish(self, report: IndexReport, progress: ProgressSink, outcome: FileOutcome) -> None:
        if outcome.status == "indexed":
            report.indexed += 1
            report.items += outcome.items
        elif outcome.status == "unchanged":
            report.unchanged += 1
        elif outcome.status == "unsupported":
            report.unsupported += 1
        else:
            report.failed.append(outcome)
        progress.file_done(outcome)

    def _skipped(self, entry: SkippedFile) -> FileOutcome:
        if entry.unsupported:
            return FileOutcome(str(entry.path), "unsupported", reason=entry.reason)
        return FileOutcome(str(entry.path), "failed", reason=entry.reason)

    # ---- one file -------------------------------------------------------------------------------------

    def _ingest_file(self, file: DiscoveredFile) -> FileOutcome | None:
        """Extract a file into the pending batch; returns an outcome now only if it needs no embedding."""
        path = str(file.path)
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
        if file.kind is FileKind.PDF:
            return extract_pdf(file.path, ingest)
        return extract_text_file(file.path, ingest)

    def _prepare(self, extracted: ExtractedItem) -> PendingItem:
        thumbnail = None
        if extracted.image is not None:
            thumbnail = self._write_thumbnail(extracted)
            extracted.image = _working_copy(extracted.image)
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
        self.collection.record_failure(
            path=str(file.path),
            kind=file.kind.value,
            content_hash=content_hash,
            size=file.size,
            mtime=file.mtime,
            error=reason,
        )
        return FileOutcome(str(file.path), "failed", reason=reason)

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
        try:
            self.vectoriser.run([it for doc in docs if doc.error is None for it in doc.items])
        except MmragError:
            raise
        except Exception:
            for doc in docs:
                if doc.error is not None:
                    continue
                try:
                    self.vectoriser.run(doc.items)
                except MmragError:
                    raise
                except Exception as exc:  # the model choked on something in this file
                    log.warning("embedding failed for %s", doc.file.path, exc_info=True)
                    doc.error = f"embedding failed: {type(exc).__name__}: {exc}"

    def _flush(self, report: IndexReport, progress: ProgressSink) -> int:
        """Embed everything pending, then commit each complete document. Returns documents committed."""
        if not self._pending:
            return 0
        self._vectorise(self._pending)
        done = 0
        for doc in self._pending:
            if doc.error is not None:
                self._finish(report, progress, self._fail(doc.file, doc.content_hash, doc.error))
                continue
            items = [_to_new_item(it) for it in doc.items if it.vectors]
            if not items:  # e.g. caption road only, and the captioner failed on every image
                reasons = {it.extracted.meta.get("caption_error") for it in doc.items} - {None}
                why = "; ".join(sorted(reasons)) or "nothing could be embedded"
                self._finish(
                    report, progress, self._fail(doc.file, doc.content_hash, f"no item indexed: {why}")
                )
                continue
            if len(items) < len(doc.items):
                log.warning(
                    "%s: %d of %d items could not be embedded",
                    doc.file.path,
                    len(doc.items) - len(items),
                    len(doc.items),
                )
            self.collection.replace_document(
                path=str(doc.file.path),
                kind=doc.file.kind.value,
                content_hash=doc.content_hash,
                size=doc.file.size,
                mtime=doc.file.mtime,
                items=items,
                meta=self.document_meta.get(str(doc.file.path)),
            )
            done += 1
            self._finish(report, progress, FileOutcome(str(doc.file.path), "indexed", items=len(items)))
        self._pending.clear()
        return done

    # ---- prune ----------------------------------------------------------------------------------------

    def _prune(self, roots: Sequence[Path], seen: set[str]) -> int:
        """Remove documents under the given roots whose files were not found in this walk."""
        prefixes = [str(Path(r).resolve()) for r in roots]
        gone = [
            doc.id
            for doc in self.collection.documents()
            if doc.path not in seen and any(_is_under(doc.path, p) for p in prefixes)
        ]
        return self.collection.delete_documents(gone)


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _working_copy(image: Image.Image) -> Image.Image:
    """Downscale to WORKING_IMAGE_SIDE, then pad extreme strips to MAX_ASPECT: models resize the short side
    to their input size, and a 1x60000 strip would otherwise become a 224x13M-pixel tensor."""
    if max(image.size) > WORKING_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((WORKING_IMAGE_SIDE, WORKING_IMAGE_SIDE), Image.Resampling.BICUBIC)
    width, height = image.size
    short = max(width, height) // MAX_ASPECT
    if min(width, height) >= short:
        return image
    canvas = Image.new("RGB", (max(width, short), max(height, short)), "white")
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


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
