"""The local runner: every stage in this process. Files are read and decoded (extract) on
`ingest.extract_workers` threads, a few files ahead of the models, which run on the calling thread.

Files are committed one transaction each, only once all their items are embedded, so a crash or Ctrl-C
never leaves half a document; embedding batches span files, so a folder of small photos still fills the
model's batch, and every file a batch completes is committed right after it (a long file that follows
them does not hold them back).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrag.blobs import BlobStore, open_blob_store
from mmrag.collection import Collection
from mmrag.errors import MmragError
from mmrag.ingest.items import FileKind
from mmrag.ingest.plan import (
    FileOutcome,
    FileTask,
    IndexReport,
    NoProgress,
    ProgressSink,
    plan,
    walked_paths,
)
from mmrag.ingest.stages import FileExtracted, commit, extract, prune
from mmrag.ingest.vectorise import PendingItem, Vectoriser
from mmrag.settings import Settings
from mmrag.store.duplicates import DuplicateGrouper

log = logging.getLogger(__name__)

_Event = PendingItem | FileExtracted


@dataclass
class _PendingDoc:
    task: FileTask
    ended: FileExtracted | None = None
    items: list[PendingItem] = field(default_factory=list)
    error: str | None = None  # set when embedding this file failed

    @property
    def path(self) -> str:
        return self.task.file.path

    @property
    def complete(self) -> bool:
        return self.error is not None or all(item.done for item in self.items)


class LocalRunner:
    def __init__(
        self,
        settings: Settings,
        collection: Collection,
        vectoriser: Vectoriser,
        document_meta: Mapping[str, dict[str, Any]] | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings
        self.collection = collection
        self.vectoriser = vectoriser
        self.document_meta = document_meta or {}  # document path -> metadata stored with its document
        self.blobs = blobs or open_blob_store(settings)
        self.batch_size = settings.models.batch_size
        self._pending: list[_PendingDoc] = []
        # near-duplicate groups grow as documents commit (one reading of the collection's groups per run)
        self._duplicates = DuplicateGrouper(collection.db, collection.name)

    # ---- the run --------------------------------------------------------------------------------------

    def run(
        self, roots: Sequence[Path | str], prune: bool = False, progress: ProgressSink | None = None
    ) -> IndexReport:
        self._progress = progress = progress or NoProgress()
        self._report = report = IndexReport()
        entries = list(plan(roots, self.settings, self.collection.documents_by_path))
        progress.start(len(entries))
        self._since_save = 0
        ingest = self.settings.ingest
        lookahead = _Lookahead(
            lambda task: extract(task, self.settings, self.blobs),
            workers=ingest.extract_workers,
            depth=max(2, self.batch_size // 2),
        )
        try:
            with lookahead:
                for entry, events in lookahead.stream(entries):
                    if events is None:
                        assert isinstance(entry, FileOutcome)
                        self._finish(entry)
                        continue
                    assert isinstance(entry, FileTask)
                    self._ingest_file(entry, events)
                    if self._pending_load() >= self.batch_size or len(self._pending) >= 64:
                        self._flush()
                self._flush()
            if prune:
                report.pruned = self._prune(roots, walked_paths(entries))
            self.collection.optimise()  # flat below index.ivf_min_items items, IVF above
        except KeyboardInterrupt:
            report.interrupted = True  # pending, uncommitted files are dropped: the next run redoes them
            self._pending.clear()
        finally:
            self.collection.save()
        return report

    def _finish(self, outcome: FileOutcome) -> None:
        self._report.add(outcome)
        self._progress.file_done(outcome)

    def _prune(self, roots: Sequence[Path | str], seen: set[str]) -> int:
        return prune(self.collection, roots, seen)

    # ---- one file -------------------------------------------------------------------------------------

    def _ingest_file(self, task: FileTask, events: Iterator[_Event]) -> None:
        """Take a file's items into the pending batch, embedding (and committing what completes) whenever
        the batch is full; a file that needs no embedding (failed, unchanged) is finished at once."""
        doc = _PendingDoc(task)
        for event in events:
            if isinstance(event, FileExtracted):
                doc.ended = event
                break
            doc.items.append(event)
            if self._pending_load(doc) >= self.batch_size:
                self._vectorise([*self._pending, doc])
                self._commit_complete()  # files this batch completed do not wait for this one
        assert doc.ended is not None
        if doc.ended.error is not None or doc.ended.unchanged:
            self._finish(commit(self.collection, task, doc.ended, []))
            return
        self._pending.append(doc)

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
                assert doc.ended is not None
                outcome = commit(
                    self.collection,
                    doc.task,
                    doc.ended,
                    doc.items,
                    meta=self.document_meta.get(doc.path),
                    error=doc.error,
                    duplicates=self._duplicates,
                )
                self._since_save += outcome.status == "indexed"
                self._finish(outcome)
            else:
                still.append(doc)
        self._pending = still
        if self._since_save >= self.settings.ingest.save_every_files:
            self.collection.save()
            self._since_save = 0


class _Crash:
    """An unexpected exception in an extraction thread, handed to the consumer to raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Lookahead:
    """Extracts the next files on `workers` threads while the caller consumes the current one; files come
    out in walk order. Each file's items wait in a queue of `depth` (memory stays bounded). PDFs are read
    one at a time, in walk order: PyMuPDF must not be used from two threads at once."""

    _POLL_S = 0.2

    def __init__(self, extract: Callable[[FileTask], Iterator[_Event]], workers: int, depth: int) -> None:
        self._extract = extract
        self._workers = workers
        self._depth = depth
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mmrag-extract")
        self._stop = threading.Event()
        self._pdf_turn = threading.Condition()
        self._pdf_next = 0  # ticket of the PDF whose turn it is
        self._pdf_tickets = 0

    def __enter__(self) -> _Lookahead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._pdf_turn:
            self._pdf_turn.notify_all()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def stream(
        self, entries: Sequence[FileTask | FileOutcome]
    ) -> Iterator[tuple[FileTask | FileOutcome, Iterator[_Event] | None]]:
        window: deque[tuple[FileTask | FileOutcome, queue.Queue[Any] | None]] = deque()
        upcoming = iter(entries)
        in_flight = 0
        while True:
            while in_flight < self._workers:  # every file in flight has a thread: none waits for another
                entry = next(upcoming, None)
                if entry is None:
                    break
                if isinstance(entry, FileTask):
                    events: queue.Queue[Any] = queue.Queue(self._depth)
                    ticket = self._ticket() if entry.file.kind is FileKind.PDF else None
                    self._pool.submit(self._produce, entry, events, ticket)
                    window.append((entry, events))
                    in_flight += 1
                else:
                    window.append((entry, None))
            if not window:
                return
            entry, events = window.popleft()
            if events is None:
                yield entry, None
                continue
            in_flight -= 1
            yield entry, self._drain(events)

    def _ticket(self) -> int:
        self._pdf_tickets += 1
        return self._pdf_tickets - 1

    def _produce(self, task: FileTask, events: queue.Queue[Any], ticket: int | None) -> None:
        try:
            if ticket is not None:
                with self._pdf_turn:
                    while self._pdf_next != ticket and not self._stop.is_set():
                        self._pdf_turn.wait()
                if self._stop.is_set():
                    return
            try:
                for event in self._extract(task):
                    if not self._put(events, event):
                        return
            finally:
                if ticket is not None:
                    with self._pdf_turn:
                        self._pdf_next = ticket + 1
                        self._pdf_turn.notify_all()
        except BaseException as exc:  # a bug, not a bad file (extract reports those): the run stops
            self._put(events, _Crash(exc))

    def _put(self, events: queue.Queue[Any], event: object) -> bool:
        while not self._stop.is_set():
            try:
                events.put(event, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _drain(self, events: queue.Queue[Any]) -> Iterator[_Event]:
        while True:
            event = events.get()
            if isinstance(event, _Crash):
                raise event.exc
            yield event
            if isinstance(event, FileExtracted):
                return
