"""Builds what a command or the service works with, from Settings: database, models, collection."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from mmrag.caption.base import Captioner
from mmrag.collection import Collection, RepairReport
from mmrag.embed.base import TextEncoder
from mmrag.embed.clip import ClipEmbedder
from mmrag.settings import Settings
from mmrag.store.db import Database

if TYPE_CHECKING:  # heavy modules, imported when first used
    from mmrag.generate.backends import Generator
    from mmrag.ingest.vectorise import Vectoriser
    from mmrag.retrieve.search import Retriever


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clip: ClipEmbedder | None
    text: TextEncoder | None
    collection: Collection
    repairs: list[RepairReport] = field(default_factory=list)

    @property
    def encoders(self) -> list[TextEncoder]:
        return [enc for enc in (self.clip, self.text) if enc is not None]

    @cached_property
    def captioner(self) -> Captioner | None:
        from mmrag.caption.factory import build_captioner

        return build_captioner(self.settings)

    @cached_property
    def generator(self) -> Generator | None:
        from mmrag.generate.backends import build_generator

        return build_generator(self.settings)

    def vectoriser(self) -> Vectoriser:
        from mmrag.caption.factory import build_ocr
        from mmrag.ingest.vectorise import Vectoriser

        return Vectoriser(
            self.db,
            self.settings.ingest.road,
            clip=self.clip,
            text=self.text,
            captioner=self.captioner,
            ocr=build_ocr(self.settings),
            caption_batch=self.settings.caption.batch_size,
        )

    def retriever(self) -> Retriever:
        from mmrag.retrieve.search import Retriever

        return Retriever(
            self.collection,
            self.encoders,
            fusion=self.settings.retrieve.fusion,
            captioner=self.captioner if self.clip is None else None,
        )

    def close(self) -> None:
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


def open_runtime(settings: Settings, collection: str | None = None) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clip, text = build_encoders(settings)
    db = Database(settings.db_url)
    try:
        coll = Collection(settings, db, [enc for enc in (clip, text) if enc is not None], name=collection)
        repairs = coll.open()
    except BaseException:
        db.close()
        raise
    return Runtime(settings, db, clip, text, coll, repairs)
