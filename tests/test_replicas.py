"""`mmrag serve` replicas against one database (PostgreSQL where MMRAG_TEST_POSTGRES_URL is set): real
processes, killed with SIGKILL.

- FAISS keeps one writer: a second replica is refused at start with a message; a replica killed mid-job
  has its job taken over by the next one and finished, with what a clean run gives and nothing twice.
- Milvus (index.backend=milvus, Milvus Lite's server on loopback): two replicas at once share the queue in
  PostgreSQL, the Milvus store and the blob store (S3 on a moto server process): an upload to one is
  searchable on the other; kill -9 of the replica running a job, and the other finishes it after its lease
  runs out, with the documents and items of a clean run, and Milvus holding exactly the database's items.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from mmrag.index.milvus_store import collection_name
from mmrag.settings import load_settings
from mmrag.store import pending
from mmrag.store.db import Database
from mmrag.store.models import Document, Item, Job
from tests.api_server import image_query, upload, wait_for_job
from tests.conftest import tiny_clip_env
from tests.milvus_server import milvus_lite_server
from tests.realdata import PHOTOS, photo_bytes, photo_image
from tests.s3_server import S3Server, s3_server

pytestmark = pytest.mark.slow  # service processes that load a model: 20-40 s each here

PHOTO_NAMES = sorted(PHOTOS)[:10]
JOB_FILES = 120
READY_S = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    process: subprocess.Popen[str]
    url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        **tiny_clip_env(data_dir),
        "MMRAG_GENERATE__BACKEND": "none",
        "MMRAG_MODELS__BATCH_SIZE": "1",  # a file per model call: a job is still running when it is killed
        "MMRAG_API__JOB_LEASE_S": "3",
        "MMRAG_API__JOB_POLL_S": "0.3",
        "MMRAG_API__MAX_FILES_PER_REQUEST": str(JOB_FILES),
        **extra,
    }


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mmrag", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, f"http://127.0.0.1:{port}"


@contextmanager
def replica(env: dict[str, str]) -> Iterator[Replica]:
    process, url = _start(env)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mmrag serve exited ({process.returncode}): {process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("mmrag serve did not get ready")
            time.sleep(0.3)
        yield Replica(process, url)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


@functools.cache
def _photos(count: int = JOB_FILES) -> list[tuple[str, bytes]]:
    """`count` distinct JPEGs: the real photos, cropped a little more each round (a job long enough to be
    killed in the middle)."""
    files = []
    for number in range(count):
        name = PHOTO_NAMES[number % len(PHOTO_NAMES)]
        image = photo_image(name)
        cut = number // len(PHOTO_NAMES)
        image = image.crop((cut, cut, image.width - cut, image.height - cut)).resize((192, 192))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        files.append((f"{number:03d}-{name}.jpg", buffer.getvalue()))
    return files


def _wait_until_some_files_are_done(client: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in ("queued", "running"), job  # it must still be running when it is killed
        if job["counts"].get("indexed", 0) >= 2:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got going")


def _collection_rows(db_url: str, collection: str) -> tuple[list[tuple[str, str]], int, int]:
    db = Database(db_url)
    try:
        with db.session() as session:
            docs = sorted(
                (Path(path).name, content_hash)
                for path, content_hash in session.execute(
                    select(Document.path, Document.content_hash).where(
                        Document.collection == collection, Document.status == "indexed"
                    )
                )
            )
            items = session.scalar(
                select(func.count()).select_from(Item).where(Item.collection == collection)
            )
            attempts = max(session.scalars(select(Job.attempts).where(Job.collection == collection)))
    finally:
        db.close()
    return docs, int(items or 0), int(attempts)


def _clean_run() -> list[tuple[str, str]]:
    return sorted((name, hashlib.sha256(data).hexdigest()) for name, data in _photos())


def test_faiss_keeps_one_writer_and_a_killed_replicas_job_is_finished_by_the_next(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _env(data, MMRAG_INDEX__BACKEND="faiss")  # also on the Milvus pass (MMRAG_TEST_BACKEND)
    db_url = load_settings(data_dir=data).db_url
    with replica(env) as first, first.client() as client:
        second, _ = _start(env)  # another replica of the same database
        _, stderr = second.communicate(timeout=READY_S)
        assert second.returncode == 2, stderr
        assert "another mmrag serve" in stderr and "index.backend=faiss" in stderr and "milvus" in stderr

        accepted = upload(client, "shared", _photos())
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        _wait_until_some_files_are_done(client, job_id)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)

    with replica(env) as successor, successor.client() as client:  # a restart: it takes the job at once
        job = wait_for_job(client, job_id)
    assert job["status"] == "done", job
    statuses = {entry["name"]: entry["status"] for entry in job["files"]}
    assert sorted(statuses) == [name for name, _ in _clean_run()]
    assert set(statuses.values()) <= {"indexed", "unchanged"} and "unchanged" in statuses.values()
    docs, items, attempts = _collection_rows(db_url, "shared")
    assert docs == _clean_run() and items == JOB_FILES  # what a clean run gives, nothing twice
    assert attempts == 2


# ---- several replicas at once: needs a vector store they share ----------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.make_bucket("media")
        yield server


@pytest.mark.milvus
@pytest.mark.skipif(
    not os.environ.get("MMRAG_TEST_POSTGRES_URL"),
    reason="two replicas at once share one PostgreSQL (MMRAG_TEST_POSTGRES_URL: scripts/postgres.sh)",
)
def test_two_replicas_share_the_queue_the_store_and_the_blobs(tmp_path: Path, s3: S3Server) -> None:
    with milvus_lite_server(tmp_path / "milvus.db") as milvus_uri:
        shared = {
            "MMRAG_INDEX__BACKEND": "milvus",
            "MMRAG_INDEX__MILVUS__URI": milvus_uri,
            "MMRAG_BLOBS__URL": "s3://media/mmrag",
            "MMRAG_BLOBS__S3__ENDPOINT_URL": s3.endpoint,
            "MMRAG_BLOBS__S3__REGION": "us-east-1",
        }
        env_a, env_b = _env(tmp_path / "a", **shared), _env(tmp_path / "b", **shared)
        db_url = load_settings(data_dir=tmp_path / "a").db_url
        with replica(env_a) as a, replica(env_b) as b, a.client() as to_a, b.client() as to_b:
            first = upload(to_a, "shared", [("rocket.jpg", photo_bytes("rocket"))]).json()
            assert wait_for_job(to_a, first["job_id"])["status"] == "done"
            for client in (to_a, to_b):  # one of them did not run the job: it finds it all the same
                hits = image_query(client, "shared", photo_bytes("rocket"), k=1).json()["hits"]
                assert hits and hits[0]["path"].endswith("rocket.jpg")
                thumbnail = client.get(f"/v1/items/{hits[0]['item_id']}/image")
                assert thumbnail.status_code == 200 and thumbnail.content  # from the shared blob store

            accepted = upload(to_a, "shared", _photos()).json()
            _wait_until_some_files_are_done(to_a, accepted["job_id"])
            owner = _owner_pid(db_url, accepted["job_id"])
            running, other = (a, to_b) if owner == a.process.pid else (b, to_a)
            running.process.send_signal(signal.SIGKILL)
            job = wait_for_job(other, accepted["job_id"], timeout=READY_S)  # after the lease runs out
            assert job["status"] == "done", job
            statuses = {entry["name"]: entry["status"] for entry in job["files"]}
            assert sorted(statuses) == [name for name, _ in _clean_run()]
            assert set(statuses.values()) <= {"indexed", "unchanged"} and "unchanged" in statuses.values()
            docs, items, attempts = _collection_rows(db_url, "shared")
            rocket = hashlib.sha256(photo_bytes("rocket")).hexdigest()
            assert docs == sorted([*_clean_run(), ("rocket.jpg", rocket)])
            assert items == len(docs) and attempts == 2  # nothing indexed twice
            # Milvus holds exactly the database's items: what the killed replica committed but Milvus never
            # acknowledged was retried by the other (nothing pending), nothing is there twice or left over.
            assert _milvus_ids(milvus_uri, "shared", "clip.image") == _item_ids(db_url, "shared")
            assert _pending(db_url, "shared") == 0
            name, data = _photos()[-1]  # committed last: searched through Milvus like the rest
            hits = image_query(other, "shared", data, k=1).json()["hits"]
            assert hits and Path(hits[0]["path"]).name.split("-", 1)[1] == name.split("-", 1)[1]


def _owner_pid(db_url: str, job_id: str) -> int:
    db = Database(db_url)
    try:
        with db.session() as session:
            owner = session.scalar(select(Job.owner).where(Job.id == job_id))
    finally:
        db.close()
    assert owner is not None
    return int(owner.rsplit(":", 3)[1])


def _item_ids(db_url: str, collection: str) -> list[int]:
    db = Database(db_url)
    try:
        with db.session() as session:
            return sorted(session.scalars(select(Item.id).where(Item.collection == collection)))
    finally:
        db.close()


def _pending(db_url: str, collection: str) -> int:
    db = Database(db_url)
    try:
        return pending.count(db, collection)
    finally:
        db.close()


def _milvus_ids(uri: str, collection: str, key: str) -> list[int]:
    """The item ids in the Milvus collection of `key`, read by a client of its own."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri)
    try:
        name = collection_name(load_settings().index.milvus.collection_prefix, collection, key)
        rows = client.query(
            name, filter="id >= 0", output_fields=["id"], limit=16_384, consistency_level="Strong"
        )
        return sorted(int(row["id"]) for row in rows)
    finally:
        client.close()
