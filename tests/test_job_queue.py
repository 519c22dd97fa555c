"""The ingest job queue replicas share (mmrag.store.job_queue), on a real database: SQLite, and PostgreSQL
where MMRAG_TEST_POSTGRES_URL is set (scripts/postgres.sh; SKIP LOCKED is exercised there)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.settings import Settings, load_settings
from mmrag.store.db import Database
from mmrag.store.job_queue import MILVUS_LITE, JobQueue, SecondWriterRefused, vector_store_kind
from mmrag.store.jobs import JobStore

LEASE_S = 30.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    settings: Settings = load_settings(data_dir=tmp_path / "data")  # MMRAG_DATABASE_URL: PostgreSQL
    database = Database(settings.db_url)
    yield database
    database.close()


def _job(db: Database, collection: str) -> str:
    return JobStore(db).create(collection, "upload", [{"name": "x", "path": "/nowhere/x.jpg"}], {}).id


def _wait_for(condition, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_oldest_first_and_one_claimed_job_per_collection(db: Database) -> None:
    a1, a2, b1 = _job(db, "a"), _job(db, "a"), _job(db, "b")
    one, two = JobQueue(db, "replica-1", LEASE_S), JobQueue(db, "replica-2", LEASE_S)
    first = one.claim()
    assert first is not None and first.id == a1 and first.owner == "replica-1" and first.attempts == 1
    second = two.claim()
    assert second is not None and second.id == b1  # a2 waits: collection a has its writer
    assert two.claim() is None
    assert one.release(a1, status="done")
    third = two.claim()
    assert third is not None and third.id == a2
    assert JobStore(db).get(a1).owner is None  # type: ignore[union-attr]


def test_a_lapsed_lease_is_taken_over_and_the_old_owner_can_no_longer_write(db: Database) -> None:
    job = _job(db, "a")
    dead, alive = JobQueue(db, "dead", lease_s=1.0), JobQueue(db, "alive", LEASE_S)
    assert dead.claim() is not None
    assert alive.claim() is None  # held, for now
    assert _wait_for(lambda: (taken := alive.claim()) is not None and taken.id == job)
    row = JobStore(db).get(job)
    assert row is not None and (row.owner, row.attempts) == ("alive", 2)
    assert not dead.renew(job) and not dead.release(job, status="done")  # its writes are refused
    assert alive.renew(job) and alive.release(job, status="done")
    assert JobStore(db).get(job).status == "done"  # type: ignore[union-attr]


def test_replicas_claiming_together_take_every_job_once(db: Database) -> None:
    jobs = {_job(db, f"c{i}") for i in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        queue = JobQueue(db, name, LEASE_S)
        misses = 0
        while misses < 20:
            job = queue.claim()
            if job is None:
                misses += 1
                continue
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(claimed) == Counter(jobs)  # each exactly once


def test_a_second_writer_of_faiss_is_refused(db: Database) -> None:
    first = JobQueue(db, "host-a:1:first", LEASE_S)
    first.register("faiss")
    for backend in ("faiss", "milvus"):
        with pytest.raises(SecondWriterRefused, match=r"another mmrag serve .* index.backend=faiss.*milvus"):
            JobQueue(db, f"host-b:{backend}", LEASE_S).register(backend)
    first.unregister()
    shared = [JobQueue(db, f"shared-{i}", LEASE_S) for i in range(2)]
    for queue in shared:
        queue.register("milvus")  # a store replicas share: any number of them
    for backend in ("faiss", MILVUS_LITE, "nosuch"):  # one a replica cannot load counts as single-writer
        with pytest.raises(SecondWriterRefused):
            JobQueue(db, f"late-{backend}", LEASE_S).register(backend)


def test_milvus_lite_on_a_local_path_is_a_single_writer(tmp_path: Path) -> None:
    """A Milvus URI that is a path is Milvus Lite inside one process: no other replica reaches it."""

    def kind(**index: object) -> str:
        return vector_store_kind(Settings(data_dir=tmp_path, index=index))

    lite = str(tmp_path / "milvus.db")
    assert kind(backend="milvus") == kind(backend="milvus", milvus={"uri": lite}) == MILVUS_LITE
    assert kind(backend="milvus", milvus={"uri": "http://milvus:19530"}) == "milvus"
    assert kind(backend="faiss") == "faiss"


def test_a_restarted_server_resumes_its_job_at_once(db: Database) -> None:
    """A process of this host that is gone (kill -9, then a restart) leaves its job to the next one at
    once, without waiting for the lease."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    job = _job(db, "a")
    old = JobQueue(db, f"{os.uname().nodename}:{gone.pid}:old", LEASE_S)
    with db.session() as session:  # its row, as that process would have written it
        from mmrag.store.models import Replica, utcnow

        session.add(
            Replica(
                id=old.replica_id, host=os.uname().nodename, pid=gone.pid, vector_store="faiss",
                started_at=utcnow(), seen_at=utcnow(),
            )
        )  # fmt: skip
    assert old.claim() is not None
    new = JobQueue(db, "restarted", LEASE_S)
    new.register("faiss")  # not refused: the other replica is a dead process of this host
    taken = new.claim()
    assert taken is not None and taken.id == job and taken.attempts == 2
