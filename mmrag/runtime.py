"""Builds what a command or the service works with, from Settings: database, models, collection.

`resolve_settings` turns what the user gave (config file or profile, MMRAG_* variables, options) into the
settings a command runs with: the collection's recorded setup under the explicit settings, or on a first
run that needs models, settings whose weights can be had here. Models are built lazily: a command that
embeds nothing (stats, delete, an index run where nothing changed) loads none.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmrag.caption.base import Captioner, OcrEngine
from mmrag.collection import Collection, RepairReport
from mmrag.embed.base import TextEncoder
from mmrag.embed.clip import ClipEmbedder
from mmrag.settings import Settings, load_settings
from mmrag.store.db import Database

if TYPE_CHECKING:  # heavy modules, imported when first used
    from mmrag.generate.backends import Generator
    from mmrag.ingest.vectorise import Vectoriser
    from mmrag.retrieve.search import Retriever, StageTimer


class Runtime:
    """The composition root: the one place where settings become a database, models, collections, a
    retriever, a vectoriser and a generator, for the CLI, the REST service, its ingest worker and the
    evaluation alike. Models load on first use; collections open on first request."""

    def __init__(self, settings: Settings, db: Database | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.clip, self.text = build_encoders(settings)
        self.db = db or Database(settings.db_url)
        self.collection: Collection | None = None  # the command's own collection (open_runtime)
        self.repairs: list[RepairReport] = []
        self._opened: list[Collection] = []

    @property
    def encoders(self) -> list[TextEncoder]:
        return [enc for enc in (self.clip, self.text) if enc is not None]

    def open_collection(self, name: str | None = None) -> Collection:
        """A collection, opened: its store agrees with the database (repaired or retried as needed)."""
        coll = Collection(self.settings, self.db, self.encoders, name=name)
        try:
            self.repairs = coll.open()
        except BaseException:
            coll.close()
            raise
        self._opened.append(coll)
        return coll

    @cached_property
    def captioner(self) -> Captioner | None:
        from mmrag.caption.factory import build_captioner

        return build_captioner(self.settings)

    @cached_property
    def ocr(self) -> OcrEngine | None:
        from mmrag.caption.factory import build_ocr

        return build_ocr(self.settings)

    @cached_property
    def generator(self) -> Generator | None:
        from mmrag.generate.backends import build_generator

        return build_generator(self.settings)

    def vectoriser(self, road: str | None = None) -> Vectoriser:
        from mmrag.ingest.vectorise import Vectoriser

        return Vectoriser(
            self.db,
            road or self.settings.ingest.road,
            clip=self.clip,
            text=self.text,
            captioner=self.captioner,
            ocr=self.ocr,
            caption_batch=self.settings.caption.batch_size,
        )

    def retriever(
        self, collection: Collection | None = None, on_stage: StageTimer | None = None
    ) -> Retriever:
        """The retriever `settings.retrieve` describes (fusion, lexical list, pages, duplicates, reranker)."""
        from mmrag.retrieve.search import retriever_from_settings

        target = collection or self.collection
        assert target is not None, "open a collection first"
        return retriever_from_settings(
            self.settings,
            target,
            self.encoders,
            captioner=self.captioner if self.clip is None else None,
            on_stage=on_stage,
        )

    def close(self) -> None:
        for coll in self._opened:
            coll.close()
        self._opened.clear()
        self.db.close()


def build_encoders(settings: Settings) -> tuple[ClipEmbedder | None, TextEncoder | None]:
    """Model objects are cheap until first used; ids are validated here, before anything touches the disk."""
    clip = ClipEmbedder(settings.models) if settings.spaces.clip else None
    text = None
    if settings.spaces.text:
        from mmrag.embed.text import TextEmbedder

        text = TextEmbedder(
            settings.models.text, device=settings.models.device, cache_dir=settings.models.cache_dir
        )
    return clip, text


def database_exists(settings: Settings) -> bool:
    """False only for an SQLite file not created yet (a first run must leave nothing behind if it fails)."""
    return settings.database_url is not None or (settings.data_dir / "mmrag.db").exists()


def resolve_settings(
    config: Path | str | None,
    overrides: dict[str, Any],
    needs_models: bool = True,
    db: Database | None = None,
) -> tuple[Settings, list[str]]:
    """The settings a command runs with, and notes for the user (one line each). db: the settings' database,
    when the caller has it open already."""
    from mmrag.collection_setup import apply_setup, differences, offline_fallback
    from mmrag.store.collections import read_setup

    settings = load_settings(config, **overrides)
    notes: list[str] = []
    recorded = None
    if db is not None:
        recorded = read_setup(db, settings.collection)
    elif database_exists(settings):
        own = Database(settings.db_url)
        try:
            recorded = read_setup(own, settings.collection)
        finally:
            own.close()
    if recorded:
        notes += [f"using {diff}" for diff in differences(settings, recorded)]
        return apply_setup(settings, recorded), notes
    if needs_models:
        settings, note = offline_fallback(settings, overrides, config or os.environ.get("MMRAG_CONFIG"))
        notes += [note] if note else []
        if settings.spaces.clip:  # a new collection's model id is checked before anything is written
            from mmrag.registry import parse_clip_id, register_model_configs

            register_model_configs(settings.models.model_config_paths)
            parse_clip_id(settings.models.clip)
    return settings, notes


def record_setup(rt: Runtime) -> None:
    """At a collection's first write: remember how it is built (later commands use it)."""
    from mmrag.collection_setup import setup_of
    from mmrag.store.collections import record_setup as record

    assert rt.collection is not None
    record(rt.db, rt.collection.name, setup_of(rt.settings))


def open_runtime(settings: Settings, collection: str | None = None, db: Database | None = None) -> Runtime:
    """A Runtime with the command's collection opened (`rt.collection`); db: the settings' database, open
    already (the Runtime closes it)."""
    rt = Runtime(settings, db)
    try:
        rt.collection = rt.open_collection(collection)
    except BaseException:
        rt.close()
        raise
    return rt
