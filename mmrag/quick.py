"""`mmrag stats` and an `mmrag index` that finds nothing changed, answered from a look at the embedded SQLite
database (mmrag.store.quick) and the saved FAISS manifests: no SQLAlchemy, no model, no FAISS.

Each answer is given only when it is the whole answer, as the full path (mmrag.runtime) would give it:
the collection was built with a recorded setup that the given settings agree with, its vectors are in
FAISS indexes saved at the database's generation with the counts the database has, and no index would be
rebuilt. Anything else returns None and the command goes the full way, which repairs, migrates, indexes or
says what is wrong. tests/test_quick.py runs both ways on the same collections and compares them.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mmrag.collection_setup import apply_setup, differences
from mmrag.errors import MmragError
from mmrag.index.base import IndexInfo, index_key, split_key
from mmrag.index.faiss_store import Store as FaissStore
from mmrag.ingest.plan import FileOutcome, FileTask, plan
from mmrag.registry import canonical_clip_id
from mmrag.settings import Settings, load_settings
from mmrag.store.quick import QuickReads


@dataclass
class QuickCollection:
    """A collection whose FAISS indexes agree with its database, opened without SQLAlchemy."""

    settings: Settings  # with the collection's recorded setup applied
    notes: list[str]  # what the full path would say about the settings ("using ...")
    reads: QuickReads
    store: FaissStore
    setup: dict[str, Any]
    generation: int  # the database's, which the saved indexes hold

    @property
    def name(self) -> str:
        return self.settings.collection

    def unchanged_since_opened(self) -> bool:
        """A fresh look (after taking the writer's lock) finds no write since the collection was checked."""
        self.reads.renew()
        return self.reads.generation(self.name) == self.generation


@contextmanager
def quick_collection(
    config: Path | str | None, overrides: dict[str, Any]
) -> Iterator[QuickCollection | None]:
    """The collection the settings name, when it can be read the quick way; None otherwise."""
    settings = load_settings(config, **overrides)
    reads = None if settings.database_url is not None else QuickReads.open(settings.data_dir / "mmrag.db")
    if reads is None:
        yield None
        return
    try:
        opened = _open(settings, reads)
    except (sqlite3.Error, MmragError, OSError, ValueError):  # the full path says what is wrong, if anything
        opened = None
    try:
        yield opened
    finally:
        reads.close()


def _open(given: Settings, reads: QuickReads) -> QuickCollection | None:
    name = given.collection
    recorded, generation = reads.setup(name), reads.generation(name)
    if not recorded or generation is None:
        return None  # a collection from before setups were recorded, or none: the full path
    settings = apply_setup(given, recorded)  # a conflicting binding setting raises: the full path says so
    if settings.index.backend != "faiss":
        return None  # a durable store is asked by the full path (what is pending, what it holds)
    spaces = reads.spaces(name)
    models: dict[str, tuple[str, int]] = {}
    for space, model_id in _encoder_model_ids(settings).items():
        if space not in spaces or spaces[space][0] != model_id:
            return None  # a new space (its model loads to learn its dimension) or another model
        models[space] = (model_id, spaces[space][1])
    store = FaissStore(settings, name)
    if not models or not store.saved_and_readable(models):
        return None
    store.open(models)  # manifests only: every index is saved and readable
    if store.saved_generation() != generation or store.keys_to_relayout():
        return None  # another process wrote since the save, or the full path would rebuild an index
    in_database = {
        index_key(space, modality): n
        for (space, modality), n in reads.vector_counts(name).items()
        if space in models
    }
    keys = {key for key in store.index_keys() if split_key(key)[0] in models} | set(in_database)
    if any(store.count(key) != in_database.get(key, 0) for key in keys):
        return None  # an index lags the database: repaired on the full path
    notes = [f"using {diff}" for diff in differences(given, recorded)]
    return QuickCollection(settings, notes, reads, store, recorded, generation)


def _encoder_model_ids(settings: Settings) -> dict[str, str]:
    """space -> the model id its encoder records (mmrag.runtime.build_encoders), without building one."""
    ids = {}
    if settings.spaces.clip:
        ids["clip"] = canonical_clip_id(settings.models.clip)
    if settings.spaces.text:
        ids["text"] = settings.models.text
    return ids


class _DocumentStatus(Protocol):
    path: str
    status: str
    error: str | None


def stats_report(
    settings: Settings,
    backend: str,
    documents: Sequence[_DocumentStatus],
    items: dict[str, int],
    indexes: dict[str, IndexInfo],
    pending: int,
    setup: dict[str, Any] | None,
) -> dict[str, Any]:
    """What `mmrag stats` reports, from either way of opening the collection."""
    return {
        "collection": settings.collection,
        "data_dir": str(settings.data_dir),
        "backend": backend,
        "documents": sum(d.status == "indexed" for d in documents),
        "failed": [{"path": d.path, "error": d.error} for d in documents if d.status == "failed"],
        "items": items,
        "indexes": {key: vars(info) for key, info in indexes.items()},
        "pending": pending,
        "setup": setup,
    }


def quick_stats(quick: QuickCollection) -> dict[str, Any]:
    return stats_report(
        quick.settings,
        quick.store.kind,
        quick.reads.documents(quick.name),
        quick.reads.modality_counts(quick.name),
        {key: quick.store.describe(key) for key in quick.store.index_keys()},
        0,  # FAISS is a cache: nothing waits for it
        quick.setup,
    )


def unchanged_outcomes(quick: QuickCollection, roots: Sequence[Path]) -> list[FileOutcome] | None:
    """Every walked file's outcome when none needs indexing (unchanged, unsupported, or failed at the
    walk: too large, unreadable); None as soon as one needs work."""
    outcomes: list[FileOutcome] = []
    for entry in plan(roots, quick.settings, lambda paths: quick.reads.documents_by_path(quick.name, paths)):
        if isinstance(entry, FileTask):
            return None
        outcomes.append(entry)
    return outcomes


@contextmanager
def writer_lock_if_free(quick: QuickCollection) -> Iterator[bool]:
    """The lock of the collection's writer (the file mmrag.collection.Collection.writer locks), taken
    without waiting: False while another process writes (the full path then says so)."""
    fd = os.open(quick.store.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock
