"""Builds what a command or the service works with, from Settings: database, models, collection."""

from __future__ import annotations

from dataclasses import dataclass

from mmrag.collection import Collection, RepairReport
from mmrag.embed.clip import ClipEmbedder
from mmrag.settings import Settings
from mmrag.store.db import Database


@dataclass
class Runtime:
    settings: Settings
    db: Database
    clip: ClipEmbedder
    collection: Collection
    repairs: list[RepairReport]

    def close(self) -> None:
        self.db.close()


def open_runtime(settings: Settings, collection: str | None = None) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    clip = ClipEmbedder(settings.models)  # validates the model id before anything touches the disk
    db = Database(settings.db_url)
    try:
        coll = Collection(settings, db, [clip], name=collection)
        repairs = coll.open()
    except BaseException:
        db.close()
        raise
    return Runtime(settings, db, clip, coll, repairs)
