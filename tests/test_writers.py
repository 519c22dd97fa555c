"""One writer per data dir, and readers that follow it (issue #16, item 5): a process holding indexes in
memory sees what another process wrote, never saves indexes older than those on disk, and an ingest job
that meets another writer's lock waits for it instead of failing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmrag.collection import Collection, CollectionLocked, NewItem
from mmrag.embed.clip import ClipEmbedder
from mmrag.index.faiss_store import STATE_FILE
from mmrag.settings import Settings
from mmrag.store.db import Database
from tests.api_server import api_settings, image_query, serve, upload, wait_for_job
from tests.conftest import tiny_clip_env
from tests.realdata import photo_bytes, write_photos


def _process(settings: Settings) -> Collection:
    """What one process holds: its own database engine and collection (flock is per open file, so two of
    them in one test process lock each other out as two processes would)."""
    collection = Collection(settings, Database(settings.db_url), [ClipEmbedder(settings.models)])
    collection.open()
    return collection


def _document(collection: Collection, name: str, vector: np.ndarray) -> int:
    item = NewItem(modality="text", content_hash=name, text=name, vectors={"clip": vector})
    with collection.writer():
        doc = collection.replace_document(
            path=f"/docs/{name}.txt", kind="text", content_hash=name, size=1, mtime=1.0, items=[item]
        )
        collection.save()
    return doc


def _unit(seed: int, dim: int = 32) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_a_reader_catches_up_with_another_writer_and_never_saves_older_indexes(
    tiny_settings: Settings,
) -> None:
    writer, reader = _process(tiny_settings), _process(tiny_settings)
    _document(writer, "first", _unit(1))
    assert reader.refresh() is True  # one query told it the database moved on
    _, ids = reader.search("clip", "text", _unit(1), 1)
    assert reader.store.count("clip.text") == 1 and ids[0][0] > 0

    _document(writer, "second", _unit(2))  # saved at a newer generation than the reader holds
    reader.save()  # stale in memory: must not overwrite the writer's indexes
    fresh = _process(tiny_settings)
    assert fresh.store.count("clip.text") == 2
    assert fresh.generation == writer.generation == fresh.store.saved_generation()
    assert reader.refresh() is True and reader.store.count("clip.text") == 2
    assert reader.refresh() is False  # nothing new: one query, nothing compared


@pytest.mark.parametrize("restore_state", [True, False])
def test_open_compares_indexes_that_are_not_of_the_current_generation(
    tiny_settings: Settings, tmp_path: Path, restore_state: bool
) -> None:
    writer = _process(tiny_settings)
    _document(writer, "a", _unit(1))
    shutil.copytree(writer.dir, tmp_path / "after-a")  # the indexes and state.json as saved after "a"
    _document(writer, "b", _unit(2))
    # As if the last save had not happened (killed): the index files of generation 1, and either their own
    # state.json or (a torn save) the newer one.
    shutil.rmtree(writer.dir / "clip.text")
    shutil.copytree(tmp_path / "after-a" / "clip.text", writer.dir / "clip.text")
    if restore_state:
        shutil.copy(tmp_path / "after-a" / STATE_FILE, writer.dir / STATE_FILE)
    reopened = _process(tiny_settings)
    assert reopened.store.count("clip.text") == 2


def test_a_second_writer_waits_for_the_lock_then_proceeds(tiny_settings: Settings) -> None:
    first, second = _process(tiny_settings), _process(tiny_settings)
    with first.writer(), pytest.raises(CollectionLocked, match="another process"), second.writer(wait_s=0.3):
        pass
    released = threading.Event()

    def hold_then_release() -> None:
        with first.writer():
            released.wait(5)

    holder = threading.Thread(target=hold_then_release)
    holder.start()
    time.sleep(0.2)
    threading.Timer(0.5, released.set).start()
    with second.writer(wait_s=30):
        assert released.is_set()  # it got the lock only once the first writer let go
    holder.join()


@pytest.mark.slow
def test_the_service_sees_what_the_cli_indexed_and_its_job_waits_for_the_cli_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = api_settings(data)
    env = {**os.environ, **tiny_clip_env(data)}
    write_photos(tmp_path / "photos", ["chelsea", "rocket"])
    with serve(settings) as server, server.client() as client:
        # the CLI writes while the service runs: the service's next query finds it, no restart
        done = subprocess.run(
            [sys.executable, "-m", "mmrag", "index", str(tmp_path / "photos")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        found = image_query(client, "default", photo_bytes("rocket"), k=1).json()["hits"]
        assert found and found[0]["path"].endswith("rocket.jpg") and found[0]["score"] > 0.99

        # another process holds the write lock: an upload is accepted, waits, then runs
        lock_fd = os.open(settings.index_dir() / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            accepted = upload(client, "default", [("coffee.jpg", photo_bytes("coffee"))])
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            time.sleep(3)
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        finally:
            os.close(lock_fd)
        job = wait_for_job(client, job_id)
        assert job["status"] == "done" and job["counts"]["indexed"] == 1, job
    # the service saved on shutdown: its indexes hold the CLI's items and its own
    reopened = _process(settings)
    assert sum(reopened.store.count(key) for key in reopened.index_keys()) == 3
