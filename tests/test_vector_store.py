"""The conformance suite every vector store backend passes (index.backend: faiss, milvus on Milvus Lite).

Through the Collection, as mmrag uses a store: add, upsert, delete, search with and without filters (k hits
whenever k items match), persistence across reopen, ids never reused, a write the store never acknowledged
retried, and kill -9 during writes followed by a reopen after which the database and the store agree.
No mock of Milvus: Milvus Lite is the real engine, on a path in the test's data dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mmrag.collection import Collection, NewItem
from mmrag.errors import ConfigError
from mmrag.filters import Filters
from mmrag.settings import Settings, load_settings
from mmrag.store import items as item_rows
from mmrag.store import pending
from mmrag.store.db import Database
from tests.milvus_server import milvus_lite_server

DIM = 16
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.milvus)]


@dataclass
class FixedEncoder:
    """A space whose vectors the tests give directly (no model: the store is under test, not a model)."""

    space: str = "clip"
    model_id: str = "test/fixed-16"
    dim: int = DIM

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("the conformance suite embeds nothing")


def backend_settings(data_dir: Path, backend: str, **index: object) -> Settings:
    return load_settings(
        data_dir=data_dir,
        index={"backend": backend, "use_gpu": "never", **index},
        spaces={"clip": True, "text": False},
    )


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return backend_settings(tmp_path / "data", request.param)


def open_collection(settings: Settings, name: str | None = None) -> Collection:
    collection = Collection(settings, Database(settings.db_url), [FixedEncoder()], name=name)
    collection.open()
    return collection


def close(collection: Collection) -> None:
    collection.close()
    collection.db.close()


@pytest.fixture
def coll(settings: Settings) -> Iterator[Collection]:
    collection = open_collection(settings)
    yield collection
    close(collection)


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add_document(
    coll: Collection,
    path: str,
    vectors: np.ndarray,
    modality: str = "image",
    meta: dict | None = None,
) -> int:
    items = [
        NewItem(modality=modality, content_hash=f"{path}#{i}", text=f"{path} {i}", vectors={"clip": v})
        for i, v in enumerate(vectors)
    ]
    return coll.replace_document(
        path=path, kind="image", content_hash=path, size=1, mtime=1.0, items=items, meta=meta or {}
    )


def assert_agrees(coll: Collection) -> None:
    """The store holds exactly the database's items, index by index, and nothing is pending."""
    for modality in ("image", "text"):
        key = f"clip.{modality}"
        expected = item_rows.vector_ids(coll.db, coll.name, "clip", modality)
        assert np.array_equal(coll.store.ids(key), expected), key
        assert coll.store.count(key) == expected.size
    assert pending.count(coll.db, coll.name) == 0


def test_add_search_upsert_delete(coll: Collection) -> None:
    rng = np.random.default_rng(0)
    first, second = unit(rng, 5), unit(rng, 3)
    doc_a = add_document(coll, "/lib/a.jpg", first)
    add_document(coll, "/lib/b.md", second, modality="text")
    assert coll.index_keys() == ["clip.image", "clip.text"]
    assert coll.store.count("clip.image") == 5 and coll.store.count("clip.text") == 3

    scores, ids = coll.search("clip", "image", first[2], 3)
    item, doc = coll.items_by_id(ids[0][:1])[int(ids[0][0])]
    assert doc.id == doc_a and item.text == "/lib/a.jpg 2" and scores[0][0] == pytest.approx(1, abs=2e-3)
    assert scores[0][0] >= scores[0][1] >= scores[0][2]
    scores, ids = coll.search("clip", "image", first[0], 10)  # k above what the index holds
    assert (ids[0][5:] == -1).all() and np.isneginf(scores[0][5:]).all() and (ids[0][:5] > 0).all()

    old_ids = set(coll.store.ids("clip.image").tolist())
    replaced = unit(rng, 2)
    add_document(coll, "/lib/a.jpg", replaced)  # a new version replaces the document's items
    new_ids = set(coll.store.ids("clip.image").tolist())
    assert len(new_ids) == 2 and not new_ids & old_ids
    _, ids = coll.search("clip", "image", replaced[1], 1)
    assert coll.items_by_id(ids[0])[int(ids[0][0])][0].text == "/lib/a.jpg 1"

    coll.delete_documents([doc_a])
    assert coll.store.count("clip.image") == 0
    _, ids = coll.search("clip", "image", replaced[1], 3)
    assert (ids == -1).all()
    assert_agrees(coll)


def test_the_store_interface_itself(coll: Collection) -> None:
    """upsert replaces a vector under the same id; delete skips ids it does not hold."""
    store = coll.store
    store.ensure("clip.page", "test/fixed-16", DIM)
    rng = np.random.default_rng(1)
    vectors = unit(rng, 4)
    ids = np.asarray([11, 12, 13, 14], dtype=np.int64)
    payloads = [item_rows.ItemPayload(int(i), "page", 1, "/x.pdf", {}) for i in ids]
    store.upsert("clip.page", ids, vectors, payloads)
    store.upsert("clip.page", ids[:1], vectors[3:4], payloads[:1])  # id 11 now points where 14 does
    assert store.count("clip.page") == 4 and store.ids("clip.page").tolist() == [11, 12, 13, 14]
    scores, found = store.search("clip.page", vectors[3], 2)
    assert set(found[0].tolist()) == {11, 14} and scores[0][1] == pytest.approx(1, abs=1e-4)
    store.delete(np.asarray([12, 999], dtype=np.int64))
    assert store.ids("clip.page").tolist() == [11, 13, 14]
    info = store.describe("clip.page")
    assert info.count == 3 and info.dim == DIM and info.backend == store.kind


def _library(coll: Collection, rng: np.random.Generator) -> dict[str, int]:
    """20 documents of 10 images under two folders, owners ann/bob/eve; a text document too."""
    ids = {}
    for d in range(20):
        folder = "/photos/2024" if d < 15 else "/photos/2024_old"  # a folder that is a string prefix
        meta = {"owner": ["ann", "bob", "eve"][d % 3], "year": 2024 if d % 2 else 2023, "public": d == 7}
        ids[f"{folder}/{d}.jpg"] = add_document(coll, f"{folder}/{d}.jpg", unit(rng, 10), meta=meta)
    add_document(coll, "/notes/n.md", unit(rng, 6), modality="text", meta={"owner": "bob"})
    return ids


def test_filters_are_pushed_down_and_return_k_hits(coll: Collection) -> None:
    rng = np.random.default_rng(2)
    docs = _library(coll, rng)
    query = unit(rng, 1)
    doc = docs["/photos/2024/3.jpg"]

    def hits(k: int, **filters: object) -> list[tuple]:
        f = Filters.of(**filters)  # type: ignore[arg-type]
        scores, ids = coll.search("clip", "image", query, k, f)
        found = coll.items_by_id(ids[0][ids[0] >= 0])
        assert list(scores[0][: len(found)]) == sorted(scores[0][: len(found)], reverse=True)
        return [found[int(i)][1] for i in ids[0] if i >= 0]

    # one document of 20: exactly its 10 items, though they are 5% of the index
    assert [d.id for d in hits(10, document_ids=[doc])] == [doc] * 10
    assert len(hits(50, document_ids=[doc])) == 10
    # a folder, not a string prefix: /photos/2024 holds 15 documents, /photos/2024_old the other 5
    in_folder = hits(200, path_prefixes=["/photos/2024"])
    assert len(in_folder) == 150 and all(d.path.startswith("/photos/2024/") for d in in_folder)
    assert len(hits(200, path_prefixes=["/photos/2024_old"])) == 50
    assert len(hits(5, path_prefixes=["/photos/2024/3.jpg"])) == 5  # a file is its own prefix
    # metadata: a string, a number, true/false; all conditions must hold
    bob = hits(30, metadata={"owner": "bob"})
    assert len(bob) == 30 and {d.meta["owner"] for d in bob} == {"bob"}
    assert [d.id for d in hits(10, metadata={"public": True})] == [docs["/photos/2024/7.jpg"]] * 10
    both = hits(200, metadata={"owner": "ann", "year": 2023})
    assert {d.path for d in both} == {
        f"/photos/{f}/{n}.jpg" for f, n in [("2024", 0), ("2024", 6), ("2024", 12), ("2024_old", 18)]
    }
    assert hits(10, metadata={"owner": "nobody"}) == []
    assert hits(10, metadata={"year": "2024"}) == []  # the string "2024" is not the number 2024
    combined = hits(
        10, path_prefixes=["/photos/2024"], metadata={"owner": "eve"}, document_ids=list(docs.values())
    )
    assert len(combined) == 10 and {d.meta["owner"] for d in combined} == {"eve"}


def test_a_selective_filter_on_a_large_ivf_index_returns_k_hits(tmp_path: Path, settings: Settings) -> None:
    """FAISS: an IVF probe of nprobe lists may hold none of the wanted items; Milvus: its own index. Both
    must still give k hits when k items match."""
    layout = {
        "ivf_min_items": 1000,
        "nprobe": 1,
        "milvus": {"index_type": "IVF_FLAT", "index_params": {"nlist": 64}, "search_params": {"nprobe": 1}},
    }
    ivf = backend_settings(tmp_path / "ivf", settings.index.backend, **layout)
    coll = open_collection(ivf)
    try:
        rng = np.random.default_rng(3)
        docs = [add_document(coll, f"/big/{d}.jpg", unit(rng, 100)) for d in range(30)]
        coll.optimise()
        if coll.store.kind == "faiss":
            assert coll.describe()["clip.image"].type.startswith("ivf")
        for doc in docs[:5]:
            _, ids = coll.search("clip", "image", unit(rng, 1), 20, Filters.of(document_ids=[doc]))
            found = coll.items_by_id(ids[0])
            assert len(found) == 20 and {d.id for _, d in found.values()} == {doc}
    finally:
        close(coll)


@pytest.mark.milvus
def test_a_selective_filter_on_milvus_hnsw_returns_k_hits(tmp_path: Path) -> None:
    """A graph index with a filter that keeps 1% of the items still gives k of them."""
    hnsw = backend_settings(tmp_path / "hnsw", "milvus", milvus={"index_type": "HNSW"})
    coll = open_collection(hnsw)
    try:
        rng = np.random.default_rng(9)
        docs = [add_document(coll, f"/g/{d}.jpg", unit(rng, 100)) for d in range(30)]
        assert "HNSW" in coll.describe()["clip.image"].type
        _, ids = coll.search("clip", "image", unit(rng, 1), 20, Filters.of(document_ids=[docs[7]]))
        found = coll.items_by_id(ids[0])
        assert len(found) == 20 and {d.id for _, d in found.values()} == {docs[7]}
    finally:
        close(coll)


def test_persistence_across_reopen_and_ids_never_reused(settings: Settings) -> None:
    rng = np.random.default_rng(4)
    coll = open_collection(settings)
    vectors = unit(rng, 8)
    doc = add_document(coll, "/keep.jpg", vectors[:4])
    gone = add_document(coll, "/gone.jpg", vectors[4:])
    gone_ids = set(coll.store.ids("clip.image").tolist()) - {
        i for i, (_, d) in coll.items_by_id(coll.store.ids("clip.image")).items() if d.id == doc
    }
    coll.delete_documents([gone])
    coll.save()
    close(coll)

    again = open_collection(settings)
    try:
        assert again.store.count("clip.image") == 4
        _, ids = again.search("clip", "image", vectors[2], 1)
        assert again.items_by_id(ids[0])[int(ids[0][0])][1].id == doc
        add_document(again, "/gone.jpg", vectors[4:])  # the same file again: new ids, never the old ones
        assert not set(again.store.ids("clip.image").tolist()) & gone_ids
        assert_agrees(again)
    finally:
        close(again)


def test_collections_are_isolated(settings: Settings) -> None:
    rng = np.random.default_rng(5)
    first = open_collection(settings)
    other = open_collection(settings, "other-one.b")
    try:
        vectors = unit(rng, 3)
        add_document(first, "/a.jpg", vectors)
        assert other.index_keys() == [] or other.store.count("clip.image") == 0
        _, ids = other.search("clip", "image", vectors[0], 5)
        assert (ids == -1).all()
        add_document(other, "/a.jpg", vectors[:1])
        assert first.store.count("clip.image") == 3 and other.store.count("clip.image") == 1
    finally:
        close(other)
        close(first)


@pytest.mark.milvus
def test_a_write_milvus_did_not_acknowledge_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The item is committed with a pending entry; the store call fails (as when Milvus is unreachable);
    the next writer applies it."""
    from mmrag.index.milvus_store import MilvusError

    settings = backend_settings(tmp_path / "data", "milvus")
    coll = open_collection(settings)
    try:
        rng = np.random.default_rng(6)
        add_document(coll, "/ok.jpg", unit(rng, 2))
        real_upsert = coll.store.upsert

        def unreachable(*args: object, **kwargs: object) -> None:
            raise MilvusError("Milvus (test) failed to upsert vectors: connection refused")

        monkeypatch.setattr(coll.store, "upsert", unreachable)
        add_document(coll, "/later.jpg", unit(rng, 3))
        assert pending.count(coll.db, coll.name) == 3 and coll.store.count("clip.image") == 2
        coll.save()  # still unreachable: the items stay queued, the write stands
        assert coll.waiting() == 3
        monkeypatch.setattr(coll.store, "upsert", real_upsert)
        with coll.writer():  # the next writer retries what is pending
            pass
        assert coll.store.count("clip.image") == 5
        assert_agrees(coll)
    finally:
        close(coll)


@pytest.mark.milvus
def test_milvus_settings_are_checked(tmp_path: Path) -> None:
    settings = backend_settings(tmp_path / "data", "milvus", milvus={"index_type": "GPU_CAGRA"})
    with pytest.raises(ConfigError, match=r"GPU_CAGRA is not built by Milvus Lite.*needs a Milvus server"):
        open_collection(settings)
    with pytest.raises(Exception, match=r"unknown Milvus index type 'NOPE'"):
        backend_settings(tmp_path / "data", "milvus", milvus={"index_type": "nope"})
    relative = load_settings(index={"milvus": {"uri": "rel/m.db"}})
    assert relative.index.milvus.uri == str(Path("rel/m.db").absolute())


@pytest.mark.milvus
def test_milvus_lite_in_another_process_is_a_clear_error(tmp_path: Path) -> None:
    settings = backend_settings(tmp_path / "data", "milvus")
    settings.data_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LITE, settings.milvus_uri],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(Exception, match=r"open in another process.*milvus-lite server"):
            open_collection(settings)
    finally:
        holder.kill()
        holder.wait(30)


@pytest.mark.milvus
def test_processes_share_milvus_lite_through_its_server_mode(tmp_path: Path) -> None:
    """What the README offers for `mmrag serve` beside `mmrag index`: `milvus-lite server` on loopback, every
    process a client. A reader sees the writer's items, and an index the writer created after it opened."""
    with milvus_lite_server(tmp_path / "shared.db") as uri:
        settings = backend_settings(tmp_path / "data", "milvus", milvus={"uri": uri})
        rng = np.random.default_rng(8)
        writer = open_collection(settings)
        add_document(writer, "/a.jpg", unit(rng, 3))
        reader = open_collection(settings)  # another client, as another process would be
        assert reader.store.count("clip.image") == 3 and reader.index_keys() == ["clip.image"]
        chunks = unit(rng, 2)
        add_document(writer, "/b.md", chunks, modality="text")  # a new Milvus collection
        assert reader.refresh() is True and reader.index_keys() == ["clip.image", "clip.text"]
        _, ids = reader.search("clip", "text", chunks[1], 1)
        assert reader.items_by_id(ids[0])[int(ids[0][0])][1].path == "/b.md"
        close(reader)
        close(writer)


_HOLD_LITE = textwrap.dedent(
    """
    import sys, time
    from pymilvus import MilvusClient
    MilvusClient(sys.argv[1]).list_collections()
    print("open", flush=True)
    time.sleep(120)
    """
)

# ---- kill -9 during writes ------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mmrag.collection import Collection, NewItem
    from mmrag.settings import load_settings
    from mmrag.store.db import Database
    from tests.test_vector_store import FixedEncoder, backend_settings, DIM
    from pathlib import Path

    settings = backend_settings(Path(sys.argv[1]), sys.argv[2])
    coll = Collection(settings, Database(settings.db_url), [FixedEncoder()])
    coll.open()
    rng = np.random.default_rng(int(sys.argv[3]))
    with coll.writer():
        for n in range(10_000):
            d = int(rng.integers(40))
            if rng.random() < 0.2:
                doc = coll.document_by_path(f"/lib/{d}.jpg")
                if doc is not None:
                    coll.delete_documents([doc.id])
                    continue
            vectors = rng.normal(size=(int(rng.integers(1, 6)), DIM)).astype(np.float32)
            items = [
                NewItem(modality="image", content_hash=f"{n}-{i}", vectors={"clip": v})
                for i, v in enumerate(vectors)
            ]
            coll.replace_document(
                path=f"/lib/{d}.jpg", kind="image", content_hash=str(n), size=1, mtime=n, items=items
            )
            if n % 7 == 0:
                coll.save()
            print(n, flush=True)
    """
)


def test_kill_9_during_writes_then_reopen_agrees(settings: Settings) -> None:
    data_dir = settings.data_dir
    rng = np.random.default_rng(7)
    for round_ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(data_dir), settings.index.backend, str(round_)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
        assert writer.stdout is not None
        wanted = int(rng.integers(5, 40))
        started = time.monotonic()
        for line in writer.stdout:
            if int(line) >= wanted or time.monotonic() - started > 120:
                break
        time.sleep(float(rng.uniform(0, 0.05)))
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        coll = open_collection(settings)
        try:
            assert_agrees(coll)
            assert coll.store.count("clip.image") > 0
        finally:
            close(coll)
