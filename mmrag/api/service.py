"""What the service holds while it runs: one Runtime (mmrag.runtime, the composition root the CLI uses too:
database, models, vector stores) and one open Collection per name.

Models are built once and shared by every collection. A collection is opened (and its indexes repaired)
the first time a request names it. Searches run in a thread pool and may run concurrently with each other
and with the one ingest job writing to the same collection: the vector store serialises its own reads
and writes, and every write to a collection from this process (ingest jobs, deletes) takes that collection's
write lock, on top of Collection.writer()'s file lock against other processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from mmrag.api.metrics import Metrics
from mmrag.api.security import ApiKeyVerifier
from mmrag.api.uploads import STALE_INCOMING_S, remove_stale_incoming
from mmrag.blobs import FolderBlobStore, key_of_location, open_blob_store
from mmrag.caption.base import Captioner, OcrEngine
from mmrag.collection import Collection
from mmrag.embed.base import TextEncoder
from mmrag.embed.clip import ClipEmbedder
from mmrag.filters import Filters
from mmrag.retrieve.search import Hit, Retriever
from mmrag.runtime import Runtime
from mmrag.settings import Settings
from mmrag.store import collections as collection_rows
from mmrag.store.db import Database
from mmrag.store.models import Document, Item

if TYPE_CHECKING:
    from mmrag.api.jobs import IngestWorker, JobStore
    from mmrag.api.keys import KeyStore

log = logging.getLogger(__name__)
T = TypeVar("T")

# The operation (query | ask) a pool thread is serving, for the stage histograms' label.
_current = threading.local()


@dataclass
class CollectionHandle:
    name: str
    collection: Collection
    retriever: Retriever  # replaced after each write, so its calibration is looked at again
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # Two first queries would otherwise both fit the calibration and race on its file.
    calibration_lock: threading.Lock = field(default_factory=threading.Lock)


def available_roads(settings: Settings) -> list[str]:
    """The image roads this server can take: clip needs the CLIP space; caption needs the text space and a
    captioner or OCR; both needs both."""
    clip = settings.spaces.clip
    caption = settings.spaces.text and (settings.caption.backend != "none" or settings.caption.ocr)
    return [
        road for road, usable in (("clip", clip), ("caption", caption), ("both", clip and caption)) if usable
    ]


def _prefix_pattern(data_dir: Path) -> re.Pattern[str]:
    """The data dir as written in the settings and as resolved (they differ behind a symlink), followed by a
    separator or by the end of the path."""
    forms = {str(data_dir.absolute()), str(data_dir.resolve())}
    alternatives = "|".join(re.escape(form.rstrip(os.sep)) for form in sorted(forms, key=len, reverse=True))
    return re.compile(f"(?<![\\w.-])(?:{alternatives})(?:{re.escape(os.sep)}|(?![\\w.-]))")


@dataclass
class FoundItem:
    hit: Hit
    document: Document


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.keys = ApiKeyVerifier(settings.api)
        self.executor = ThreadPoolExecutor(settings.api.workers, thread_name_prefix="mmrag-pool")
        self.runtime: Runtime | None = None
        self.blobs = open_blob_store(settings)  # thumbnails and uploads, shared by every replica
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._handles: dict[str, CollectionHandle] = {}
        self._handles_lock = threading.Lock()
        # set by load() once the database is open
        self.job_store: JobStore
        self.key_store: KeyStore
        self.worker: IngestWorker
        self._data_dir_pattern = _prefix_pattern(settings.data_dir)
        self.answers: Any = None  # answering.AnswerService, made on the first /ask

    # ---- start and stop -------------------------------------------------------------------------------

    def load(self) -> None:
        """Database and the default collection: ready to answer. Model weights load on the first request
        that needs them (api.preload_models: at start)."""
        settings = self.settings
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_incoming(self.incoming_root(), STALE_INCOMING_S)
            if removed:
                log.warning("removed %d partial upload(s) left by a server that stopped mid-upload", removed)
            self.runtime = Runtime(settings)
            self.runtime.captioner, self.runtime.ocr  # noqa: B018 - built (not loaded) now: bad settings fail here
            handle = self.handle(settings.collection, create=True)
            assert handle is not None
            if settings.api.preload_models:  # else the first request that needs a model loads it
                for encoder in self.encoders:
                    encoder.load()  # type: ignore[attr-defined]
                self.warm_calibration(handle)
            from mmrag.api.jobs import IngestWorker, JobStore
            from mmrag.api.keys import KeyStore

            self.key_store = KeyStore(self.runtime.db)
            self.job_store = JobStore(self.runtime.db)
            self.worker = IngestWorker(self, self.job_store)
            self.worker.start()  # jobs left unfinished by the last run go first
        except Exception as exc:
            self.load_error = self.redact(f"{type(exc).__name__}: {exc}")  # /ready shows it to anyone
            log.exception("the service could not load")
            return
        self.ready.set()

    def close(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()
        if self.answers is not None:
            self.answers.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        with self._handles_lock:
            for handle in self._handles.values():
                with handle.write_lock:
                    handle.collection.save_if_unlocked()  # never while another process writes
        if self.runtime is not None:
            self.runtime.close()

    def uploads_dir(self, collection: str) -> Path:
        return self.settings.data_dir / "uploads" / collection

    def incoming_root(self) -> Path:
        return self.settings.data_dir / "uploads" / ".incoming"

    def incoming_dir(self) -> Path:
        """A fresh folder for one request's files while they stream in (hidden: never walked)."""
        return self.incoming_root() / uuid.uuid4().hex

    @property
    def file_roots(self) -> list[Path]:
        """Where files are served from: the data dir and the folders server-side ingest may read."""
        blob_folder = [self.blobs.root.resolve()] if isinstance(self.blobs, FolderBlobStore) else []
        return [
            self.settings.data_dir.resolve(),
            *blob_folder,  # uploads, where blobs.url names a folder of their own
            *(root.resolve() for root in self.settings.api.allowed_roots),
        ]

    def public_path(self, path: str) -> str:
        """Uploaded files are shown relative to the data dir (uploads/<collection>/<sha256>/<name>), not
        with the server's own layout; documents indexed from folders keep their absolute paths."""
        key = key_of_location(self.blobs, path) if path.startswith("s3://") else None
        if key is not None and key.startswith("uploads/"):  # an upload in an S3 blob store
            return key
        return self.redact(path)

    def redact(self, text: str) -> str:
        """`text` (a path, a reason, an error from a library such as MuPDF) with every path under the data
        dir made relative to it, and the data dir itself named as such: clients never see server paths."""
        return self._data_dir_pattern.sub(lambda m: "" if m.group(0).endswith(os.sep) else "<data dir>", text)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (models, FAISS, database, files) on the pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args, **kwargs))

    def loaded_models(self) -> dict[str, bool]:
        """Model id -> whether its weights are in memory (for /ready)."""
        models = [*self.encoders, self.captioner, self.ocr]
        return {
            getattr(m, "model_id", None) or getattr(m, "captioner_id", None) or m.ocr_id: bool(m.loaded)
            for m in models
            if m is not None and hasattr(m, "loaded")
        }

    # ---- collections ------------------------------------------------------------------------------------

    # The runtime's parts, by the names the routes use.
    @property
    def db(self) -> Database | None:
        return self.runtime.db if self.runtime is not None else None

    @property
    def clip(self) -> ClipEmbedder | None:
        return self.runtime.clip if self.runtime is not None else None

    @property
    def text(self) -> TextEncoder | None:
        return self.runtime.text if self.runtime is not None else None

    @property
    def captioner(self) -> Captioner | None:
        return self.runtime.captioner if self.runtime is not None else None

    @property
    def ocr(self) -> OcrEngine | None:
        return self.runtime.ocr if self.runtime is not None else None

    @property
    def encoders(self) -> list[TextEncoder]:
        return self.runtime.encoders if self.runtime is not None else []

    def collection_exists(self, name: str) -> bool:
        assert self.runtime is not None
        return collection_rows.collection_exists(self.runtime.db, name)

    def collection_names(self) -> list[str]:
        assert self.runtime is not None
        return collection_rows.collection_names(self.runtime.db)

    def handle(self, name: str, create: bool = False) -> CollectionHandle | None:
        """The open collection `name`; None when it does not exist and `create` is False (reads never create
        a collection, so a typo in a name gives 404 rather than an empty collection)."""
        with self._handles_lock:
            handle = self._handles.get(name)
            if handle is not None:
                return handle
            if not create and not self.collection_exists(name):
                return None
            assert self.runtime is not None
            collection = self.runtime.open_collection(name)
            for report in self.runtime.repairs:
                if report.changed:
                    log.warning("collection %s: repaired the %s index from the database", name, report.space)
            handle = CollectionHandle(name, collection, self._retriever(collection))
            self._handles[name] = handle
            return handle

    def _retriever(self, collection: Collection) -> Retriever:
        assert self.runtime is not None
        return self.runtime.retriever(collection, on_stage=self._observe_stage)

    def _observe_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage(getattr(_current, "operation", "query"), stage, seconds)

    def collection_changed(self, handle: CollectionHandle) -> None:
        """After a write: a fresh retriever reloads (or refits, if it grew enough) the calibration."""
        handle.retriever = self._retriever(handle.collection)

    def warm_calibration(self, handle: CollectionHandle) -> None:
        if self.settings.retrieve.fusion == "calibrated":
            with handle.calibration_lock:
                handle.retriever.calibration  # noqa: B018 - fitted (or loaded) here, once

    # ---- search -----------------------------------------------------------------------------------------

    def search(
        self,
        handle: CollectionHandle,
        *,
        text: str | None,
        image: Image.Image | None,
        k: int,
        fusion: str | None = None,
        filters: Filters | None = None,
        operation: str = "query",
    ) -> list[FoundItem]:
        """Retriever.search, with each hit's document; `filters` are pushed into the vector stores' search."""
        _current.operation = operation
        if (fusion or self.settings.retrieve.fusion) == "calibrated":
            self.warm_calibration(handle)
        documents: dict[int, Document] = {}

        def remember(item: Item, doc: Document) -> bool:
            documents[item.id] = doc  # the hit's document, without asking the database again
            return True

        hits = handle.retriever.search(text, image, k, fusion=fusion, item_filter=remember, filters=filters)
        return [FoundItem(hit, documents[hit.item_id]) for hit in hits]
