"""The collection keeps its FAISS indexes and the database consistent, and repairs drift from the DB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmrag.collection import Collection, NewItem
from mmrag.embed.clip import ClipEmbedder
from mmrag.errors import ModelMismatchError
from mmrag.settings import Settings
from mmrag.store.db import Database
from tests.conftest import TINY_CLIP_WIDE_CONFIG, tiny_clip_id


def _open(settings: Settings, clip: ClipEmbedder | None = None) -> tuple[Collection, Database]:
    db = Database(settings.db_url)
    coll = Collection(settings, db, [clip or ClipEmbedder(settings.models)])
    coll.open()
    return coll, db


def _add_docs(coll: Collection, n_docs: int, per_doc: int, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n_docs * per_doc, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for d in range(n_docs):
        items = [
            NewItem(
                modality="text",
                content_hash=f"h{d}-{i}",
                text=f"chunk {i}",
                vectors={"clip": vectors[d * per_doc + i]},
            )
            for i in range(per_doc)
        ]
        coll.replace_document(
            path=f"/docs/{d}.txt", kind="text", content_hash=f"d{d}", size=1, mtime=1.0, items=items
        )
    return vectors


def _db_item_count(db: Database) -> int:
    from sqlalchemy import func, select

    from mmrag.store.models import Item

    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Item)) or 0)


def test_replace_document_swaps_items_and_index_entries(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    vectors = _add_docs(coll, 3, 4)
    assert coll.store.count("clip.text") == 12 == _db_item_count(db)
    # the stored vector finds its own item first
    scores, ids = coll.search("clip", "text", vectors[5], 1)
    item, doc = coll.items_by_id(ids[0])[int(ids[0][0])]
    assert doc.path == "/docs/1.txt" and item.text == "chunk 1" and scores[0][0] == pytest.approx(1, abs=2e-3)
    # a new version of document 1 with one item replaces its four
    new_vec = np.ones(32, dtype=np.float32) / np.sqrt(32)
    coll.replace_document(
        path="/docs/1.txt",
        kind="text",
        content_hash="d1v2",
        size=2,
        mtime=2.0,
        items=[NewItem(modality="text", content_hash="new", text="v2", vectors={"clip": new_vec})],
    )
    assert coll.store.count("clip.text") == 9 == _db_item_count(db)
    indexed = coll.items_by_id(coll.store.ids("clip.text")).values()
    assert sorted(item.text for item, doc in indexed if doc.path == "/docs/1.txt") == ["v2"]
    db.close()


def test_deleted_ids_are_never_reused(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 2, 2)
    before = set(coll.store.ids("clip.text").tolist())
    coll.delete_documents([d.id for d in coll.documents() if d.path == "/docs/1.txt"])
    _add_docs(coll, 1, 2)  # re-adds /docs/0.txt: replaced, with new ids
    after = set(coll.store.ids("clip.text").tolist())
    assert not (after & before), "a deleted item's FAISS id was handed to a new item"
    db.close()


def test_index_that_lags_the_database_is_repaired_on_open(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 2, 3)
    coll.save()
    # more writes reach the database, but the process dies before the index is saved
    _add_docs(coll, 4, 3)
    db.close()
    coll2, db2 = _open(tiny_settings)
    assert coll2.store.count("clip.text") == 12 == _db_item_count(db2)
    db2.close()


def test_index_with_entries_the_database_lost_is_repaired(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 3, 2)
    coll.save()
    # the documents disappear from the database (e.g. deleted by another process) but the index kept them
    from sqlalchemy import delete

    from mmrag.store.models import Document

    with db.session() as s:
        s.execute(delete(Document).where(Document.path == "/docs/2.txt"))
    db.close()
    coll2, db2 = _open(tiny_settings)
    assert coll2.store.count("clip.text") == 4 == _db_item_count(db2)
    db2.close()


def test_torn_index_is_rebuilt_from_the_database(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    vectors = _add_docs(coll, 2, 3)
    coll.save()
    db.close()
    index_file = tiny_settings.index_dir() / "clip.text" / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:100])  # a torn write
    coll2, db2 = _open(tiny_settings)
    assert coll2.store.count("clip.text") == 6
    _, ids = coll2.search("clip", "text", vectors[4], 1)
    assert coll2.items_by_id(ids[0])[int(ids[0][0])][1].path == "/docs/1.txt"
    manifest = json.loads((tiny_settings.index_dir() / "clip.text" / "manifest.json").read_text())
    assert manifest["count"] == 6
    db2.close()


def test_opening_with_another_model_is_refused(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 1, 1)
    coll.save()
    db.close()
    wide = tiny_settings.model_copy(
        update={
            "models": tiny_settings.models.model_copy(update={"clip": tiny_clip_id(TINY_CLIP_WIDE_CONFIG)})
        }
    )
    with pytest.raises(
        ModelMismatchError, match=r"built with model \S+test-tiny/\S+ \(dim 32\).*model is \S+tiny-wide/"
    ):
        _open(wide)


def test_opening_a_built_collection_loads_no_model(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 2, 2)
    coll.save()
    db.close()
    clip = ClipEmbedder(tiny_settings.models)
    reopened, _ = _open(tiny_settings, clip)
    assert clip._model is None  # the dimension came from the collection's record
    assert reopened.dims == {"clip": 32} and reopened.store.count("clip.text") == 4


def test_collections_are_isolated(tiny_settings: Settings, tmp_path: Path) -> None:
    coll, db = _open(tiny_settings)
    vectors = _add_docs(coll, 2, 2)
    other = Collection(tiny_settings, db, [ClipEmbedder(tiny_settings.models)], name="other")
    other.open()
    assert other.index_keys() == []
    _, ids = other.search("clip", "text", vectors[0], 5)
    assert (ids == -1).all()
    assert other.items_by_id(coll.store.ids("clip.text")) == {}
    db.close()


def test_large_flat_index_is_rebuilt_as_ivf_and_still_finds_items(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(
        update={"index": tiny_settings.index.model_copy(update={"ivf_min_items": 1000})}
    )
    coll, db = _open(settings)
    vectors = _add_docs(coll, 20, 60)
    assert coll.describe()["clip.text"].type == "flat"
    assert coll.optimise() == ["clip.text"]
    described = coll.describe()["clip.text"]
    assert described.type.startswith("ivf") and described.count == 1200
    _, ids = coll.search("clip", "text", vectors[700], 1)
    assert coll.items_by_id(ids[0])[int(ids[0][0])][1].path == "/docs/11.txt"
    assert coll.optimise() == []
    db.close()


def test_a_reader_does_not_save_while_a_writer_holds_the_collection(tiny_settings: Settings) -> None:
    coll, db = _open(tiny_settings)
    _add_docs(coll, 2, 2)
    coll.save()
    _add_docs(coll, 3, 2)  # in the database, not yet in the saved index
    manifest = tiny_settings.index_dir() / "clip.text" / "manifest.json"
    with coll.writer():
        reader, rdb = _open(tiny_settings)  # repairs in memory: sees all 6 items
        assert reader.store.count("clip.text") == 6
        assert json.loads(manifest.read_text())["count"] == 4  # but left the writer's files alone
        rdb.close()
    reader, rdb = _open(tiny_settings)  # no writer now: the repair is saved
    assert json.loads(manifest.read_text())["count"] == 6
    rdb.close()
    db.close()
