"""Background ingest: jobs are rows in the database (table `jobs`), a queue that every replica of the
service shares (mmrag.store.job_queue): each replica's worker thread claims the oldest job nobody holds,
renews its lease while it runs it, and lets go when it ends. A replica killed mid-job stops renewing; when
its lease runs out another replica takes the job over and runs it again (files already committed are then
unchanged: nothing is indexed twice). The job runs the same runner the CLI uses: in this process, or on the
Ray cluster (ingest.runner=ray, for jobs of api.ray_min_files files or more, and folders).

A job's status, counts and per-file outcomes (with the reason of every failure, paths under the data dir
made relative to it) are written back to its row as files finish (the web page shows per-file progress from
them) and when it ends, so they survive a restart. A job stays `queued` until its runner starts (it may wait
for another writer's lock). One job per collection runs at a time, across replicas; queries keep running on
the service's pool meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.blobs import is_s3_url
from mmrag.collection import CollectionLocked
from mmrag.errors import MmragError
from mmrag.ingest.pipeline import FileOutcome, NoProgress
from mmrag.ingest.runners import make_runner
from mmrag.ingest.vectorise import Vectoriser
from mmrag.store.items import document_ids_by_path
from mmrag.store.job_queue import JobQueue, new_replica_id, vector_store_kind
from mmrag.store.jobs import UNFINISHED, JobStore
from mmrag.store.models import Job, utcnow

if TYPE_CHECKING:
    from mmrag.api.service import CollectionHandle, Service

log = logging.getLogger(__name__)

_LOCK_WAIT_STEP_S = 2.0  # how often a job waiting for the write lock looks at the service stopping
# Vectoriser.seconds keys -> the stage names of the metrics
_STAGE_OF = {"embed_clip": "embed", "embed_text": "embed", "caption": "caption", "ocr": "ocr"}
# A running job's row shows the files done so far (GET /v1/jobs/{id}), refreshed at most this often.
_REPORT_EVERY_S = 1.0


class _ServiceStopping(Exception):
    """The service stops (or the job was taken over) while the job waits for the write lock."""


class _JobProgress(NoProgress):
    """Collects each file's outcome and the items embedded so far, and hands them to `report` (at most once
    a `_REPORT_EVERY_S`, so a big folder does not rewrite its job row per file); asks the Indexer to stop
    at the next file when the service shuts down."""

    def __init__(
        self,
        stopping: threading.Event,
        report: Callable[[list[FileOutcome], int], None] | None = None,
        lost: threading.Event | None = None,
    ) -> None:
        self.stopping = stopping
        self.lost = lost or threading.Event()  # another replica took the job over: stop, write nothing
        self.report = report
        self.outcomes: list[FileOutcome] = []
        self.embedded = 0  # items with their vectors, committed or not: moves while a batch is open
        self._reported_at = 0.0

    def items_embedded(self, count: int) -> None:
        self.embedded += count
        self._maybe_report()

    def file_done(self, outcome: FileOutcome) -> None:
        self.outcomes.append(outcome)
        self._maybe_report()
        if self.stopping.is_set() or self.lost.is_set():
            # Indexer.run's own Ctrl-C path: drop uncommitted files, save the indexes, report "interrupted".
            raise KeyboardInterrupt

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if self.lost.is_set():
            return
        if self.report is not None and now - self._reported_at >= _REPORT_EVERY_S:
            self._reported_at = now
            self.report(list(self.outcomes), self.embedded)


class IngestWorker:
    def __init__(self, service: Service, store: JobStore) -> None:
        self.service = service
        self.store = store
        api = service.settings.api
        self.queue = JobQueue(store.db, new_replica_id(), api.job_lease_s)
        self._wake = threading.Event()  # a job was queued here: look now rather than at the next poll
        self._stopping = threading.Event()
        self._lost = threading.Event()  # the job in hand was taken over by another replica
        self._current: str | None = None
        self._beat_stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mmrag-ingest", daemon=True)
        self._beat = threading.Thread(target=self._heartbeat, name="mmrag-lease", daemon=True)

    def start(self) -> None:
        """Join the replicas of this database (refused beside another writer of a single-writer store),
        then work through the queue: jobs left unfinished by the last run go first."""
        self.queue.register(vector_store_kind(self.service.settings))
        self._beat.start()
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._wake.set()
        self.service.metrics.queue_depth.set(self.queue.waiting())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the file in hand (an interrupted job is queued again, for any replica)."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._beat_stop.set()
        if self._beat.is_alive():
            self._beat.join(timeout)
        try:
            self.queue.unregister()
        except Exception:
            log.warning("could not unregister replica %s", self.queue.replica_id, exc_info=True)

    def _loop(self) -> None:
        poll = self.service.settings.api.job_poll_s
        while not self._stopping.is_set():
            try:
                job = self.queue.claim()
                self.service.metrics.queue_depth.set(self.queue.waiting())
            except Exception:  # the database is away for a moment: try again at the next poll
                log.warning("could not look for ingest jobs", exc_info=True)
                job = None
            if job is None:
                self._wake.wait(poll)
                self._wake.clear()
                continue
            self._lost.clear()
            self._current = job.id
            try:
                self.run_job(job.id)
            finally:
                self._current = None

    def _heartbeat(self) -> None:
        """Renew this replica's presence and the lease of the job in hand, three times a lease."""
        interval = self.service.settings.api.job_lease_s / 3
        while not self._beat_stop.wait(interval):
            try:
                self.queue.heartbeat()
                current = self._current
                if current is not None and not self.queue.renew(current):
                    log.warning("job %s was taken over by another replica; this one stops it", current)
                    self._lost.set()
            except Exception:
                log.warning("could not renew the job lease", exc_info=True)

    # ---- one job --------------------------------------------------------------------------------------

    def run_job(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job.status not in UNFINISHED:
            return
        metrics = self.service.metrics
        progress = _JobProgress(self._stopping, partial(self._report_progress, job), self._lost)
        vectoriser: Vectoriser | None = None
        metrics.jobs_running.inc()
        try:
            vectoriser, interrupted = self._index(job, progress)
            if self._lost.is_set():
                return  # another replica runs it now: its outcome is that replica's to write
            if interrupted:
                self.queue.release(job_id, status="queued", started_at=None, files=[], counts={})
                return
            files = self._file_reports(job, progress.outcomes)
            for entry in files:
                metrics.files.labels(status=entry["status"]).inc()
            self.queue.release(
                job_id, status="done", counts=_counts(files), files=files, finished_at=utcnow()
            )
            metrics.jobs.labels(status="done").inc()
        except MmragError as exc:
            self._failed(job_id, str(exc), progress)
        except Exception as exc:  # a bug or an environment problem: the job says so, the service lives on
            log.exception("ingest job %s failed", job_id)
            self._failed(job_id, f"internal error: {type(exc).__name__}: {exc}", progress)
        finally:
            metrics.jobs_running.dec()
            if vectoriser is not None:
                per_stage: dict[str, float] = defaultdict(float)
                for key, seconds in vectoriser.seconds.items():
                    per_stage[_STAGE_OF.get(key, key)] += seconds
                for stage, seconds in per_stage.items():
                    metrics.stage("ingest", stage, seconds)

    def _index(self, job: Job, progress: _JobProgress) -> tuple[Vectoriser, bool]:
        service = self.service
        settings = service.settings
        handle = service.handle(job.collection, create=True)
        assert handle is not None and service.runtime is not None
        vectoriser = service.runtime.vectoriser(job.options.get("road"))
        roots = [_root(entry) for entry in job.inputs]
        metadata = job.options.get("metadata") or {}
        document_meta = {_document_path(r): metadata for r in roots} if job.kind == "upload" else {}
        large = job.kind == "folder" or len(roots) >= settings.api.ray_min_files
        runner = "ray" if settings.ingest.runner == "ray" and large else "local"
        indexer = make_runner(runner, settings, handle.collection, vectoriser, document_meta=document_meta)
        try:
            with handle.write_lock, self._writer(handle):
                self.store.update(job.id, status="running", started_at=utcnow(), error=None)
                report = indexer.run(roots, prune=bool(job.options.get("prune")), progress=progress)
                if metadata and job.kind == "upload":  # a file uploaded again takes the new metadata
                    unchanged = [o.path for o in progress.outcomes if o.status == "unchanged"]
                    handle.collection.set_metadata(unchanged, metadata)
        except _ServiceStopping:
            return vectoriser, True
        service.collection_changed(handle)
        return vectoriser, report.interrupted

    @contextmanager
    def _writer(self, handle: CollectionHandle) -> Iterator[None]:
        """The collection's write access. While another process holds it (`mmrag index` on the same data
        dir), the job stays queued and waits; a service shutting down stops waiting (the job stays queued
        for the next start)."""
        with ExitStack() as stack:
            while True:
                try:
                    stack.enter_context(handle.collection.writer(wait_s=_LOCK_WAIT_STEP_S))
                    break
                except CollectionLocked as exc:
                    if self._stopping.is_set() or self._lost.is_set():
                        raise _ServiceStopping from None
                    log.info("ingest job waits: %s", exc)
            yield

    def _report_progress(self, job: Job, outcomes: list[FileOutcome], embedded: int) -> None:
        try:
            files = self._file_reports(job, outcomes)
            self.store.update(job.id, files=files, counts={**_counts(files), "items_embedded": embedded})
        except Exception:  # progress is for the eyes; the job itself goes on, and its end is recorded
            log.warning("job %s: could not record progress", job.id, exc_info=True)

    def _file_reports(self, job: Job, outcomes: list[FileOutcome]) -> list[dict[str, Any]]:
        names = {_document_path(_root(entry)): entry.get("name") for entry in job.inputs}
        doc_ids = document_ids_by_path(self.store.db, job.collection, [o.path for o in outcomes])
        return [
            {
                "name": names.get(o.path) or self.service.public_path(o.path),
                "status": o.status,
                "items": o.items,
                "reason": self.service.redact(o.reason) if o.reason else o.reason,
                "document_id": doc_ids.get(o.path),
            }
            for o in outcomes
        ]

    def _failed(self, job_id: str, error: str, progress: _JobProgress) -> None:
        job = self.store.get(job_id)
        files = self._file_reports(job, progress.outcomes) if job is not None else []
        error = self.service.redact(error)  # reasons and errors are stored without the server's paths
        if self.queue.release(job_id, status="failed", error=error, files=files, finished_at=utcnow()):
            self.service.metrics.jobs.labels(status="failed").inc()


def _root(entry: dict[str, Any]) -> Path | str:
    """A job input: a local path, or an s3:// URL (an upload in an S3 blob store)."""
    return entry["path"] if is_s3_url(entry["path"]) else Path(entry["path"])


def _document_path(root: Path | str) -> str:
    return root if isinstance(root, str) else str(root.resolve())


def _counts(files: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for entry in files:
        counts[entry["status"]] += 1
        counts["items"] += entry["items"]
    return dict(counts)
