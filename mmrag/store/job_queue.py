"""The ingest job queue that every replica of the service shares, and the register of live replicas.

A replica claims the oldest claimable job with `SELECT ... FOR UPDATE SKIP LOCKED` (PostgreSQL; replicas
claiming at the same moment never wait for each other nor take the same row) and holds it under a lease
it renews while it works. A job is claimable when nobody holds it or its lease ran out: a replica killed
mid-job loses it after `lease_s`, and another one takes it over and runs it again (files already committed
are then unchanged; nothing is indexed twice). At most one job per collection is claimed at a time (a
unique index on the claimed jobs' collection), so one collection always has one writer.

On SQLite the same statements run without SKIP LOCKED (SQLite serialises writers): a single-process
queue that behaves the same for one server.

Times are the database server's (PostgreSQL's now()), so replicas' clocks need not agree.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from mmrag.errors import MmragError
from mmrag.settings import Settings
from mmrag.store.db import Database
from mmrag.store.jobs import UNFINISHED
from mmrag.store.models import Job, Replica

log = logging.getLogger(__name__)

# Key of the PostgreSQL advisory lock around replica registration ("mmrag" + 2): two replicas starting
# together must see each other.
REPLICA_LOCK_KEY = 0x6D6D726167_000002


class SecondWriterRefused(MmragError):
    """A replica that would make a second writer of a single-writer vector store (FAISS)."""


MILVUS_LITE = "milvus-lite"  # index.backend=milvus on a local path: Milvus Lite inside this one process


def vector_store_kind(settings: Settings) -> str:
    """The replica's vector store: index.backend, or milvus-lite when Milvus is a local path (Milvus Lite
    in this process: no other replica, on this machine or another, reaches that store)."""
    backend = settings.index.backend
    if backend == "milvus" and "://" not in settings.milvus_uri:
        return MILVUS_LITE
    return backend


def single_writer(kind: str) -> bool:
    """A store that is a cache in each process (FAISS), or Milvus Lite in one process, admits one writer per
    database; a durable store on a server (Milvus) is shared by every replica. A backend this replica cannot
    load counts as single-writer."""
    if kind == MILVUS_LITE:
        return True
    from mmrag.index.base import store_class

    try:
        return not store_class(kind).durable
    except MmragError:
        return True


def _described(kind: str) -> str:
    if kind == MILVUS_LITE:
        return "index.backend=milvus on a local path (Milvus Lite, inside that process)"
    return f"index.backend={kind}"


def check_can_serve(settings: Settings) -> None:
    """Raises SecondWriterRefused when a replica with these settings would be refused."""
    db = Database(settings.db_url)
    try:
        JobQueue(db, new_replica_id(), settings.api.job_lease_s).check(vector_store_kind(settings))
    finally:
        db.close()


# Tells this process from an earlier one with the same pid on the same host (a restarted container's
# pid 1): a replica row with this host and pid but another token is a process that is gone.
_PROCESS_TOKEN = uuid.uuid4().hex[:8]


def new_replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}:{uuid.uuid4().hex[:8]}"


def _earlier_process(replica: Replica) -> bool:
    """A replica row of this host whose process is gone."""
    if replica.pid != os.getpid():
        return not _pid_alive(replica.pid)
    parts = replica.id.rsplit(":", 3)
    return len(parts) == 4 and parts[2] != _PROCESS_TOKEN


class JobQueue:
    def __init__(self, db: Database, replica_id: str, lease_s: float) -> None:
        self.db = db
        self.replica_id = replica_id
        self.lease = timedelta(seconds=lease_s)
        self.postgres = db.engine.dialect.name == "postgresql"

    def _now(self, session: Session) -> datetime:
        if self.postgres:
            return session.scalar(select(func.now()))  # type: ignore[return-value]
        return datetime.now(timezone.utc)

    # ---- jobs -----------------------------------------------------------------------------------------

    def claim(self) -> Job | None:
        """The oldest job nobody holds (or whose holder's lease ran out), now held by this replica; None
        when there is none, or another replica won the race for its collection."""
        try:
            with self.db.session() as session:
                now = self._now(session)
                other = aliased(Job)
                claimable = and_(
                    Job.status.in_(UNFINISHED),
                    or_(Job.owner.is_(None), Job.lease_until.is_(None), Job.lease_until < now),
                )
                query = (
                    select(Job)
                    .where(
                        claimable,
                        ~exists().where(
                            and_(
                                other.collection == Job.collection,
                                other.id != Job.id,
                                other.owner.is_not(None),
                            )
                        ),
                    )
                    .order_by(Job.created_at, Job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True, of=Job)
                )
                job = session.scalar(query)
                if job is None:
                    return None
                # Compare and set: on SQLite (no row locks) a claim that lost the race changes no row.
                taken = session.execute(
                    update(Job)
                    .where(Job.id == job.id, claimable)
                    .values(owner=self.replica_id, lease_until=now + self.lease, attempts=Job.attempts + 1)
                    .execution_options(synchronize_session=False)
                )
                if not taken.rowcount:
                    return None
                if job.owner is not None:
                    log.warning("job %s: the lease of %s ran out; taking it over", job.id, job.owner)
                session.refresh(job)
                return job
        except (IntegrityError, OperationalError) as exc:  # another replica claimed this collection first
            log.info("claiming a job lost a race: %s", str(exc).splitlines()[0])
            return None

    def renew(self, job_id: str) -> bool:
        """Extend this replica's lease on the job; False when it is no longer ours (taken over)."""
        with self.db.session() as session:
            now = self._now(session)
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == self.replica_id)
                .values(lease_until=now + self.lease)
            )
            return bool(done.rowcount)

    def release(self, job_id: str, **fields: Any) -> bool:
        """Let go of the job, writing `fields` (its end, or its return to the queue) if it is still ours."""
        with self.db.session() as session:
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == self.replica_id)
                .values(owner=None, lease_until=None, **fields)
            )
            return bool(done.rowcount)

    def waiting(self) -> int:
        """Jobs nobody holds yet."""
        with self.db.session() as session:
            return int(
                session.scalar(
                    select(func.count()).select_from(Job).where(Job.status == "queued", Job.owner.is_(None))
                )
                or 0
            )

    # ---- replicas -------------------------------------------------------------------------------------

    def register(self, vector_store: str) -> None:
        """Record this replica. A single-writer store (FAISS) admits no other live replica on the same
        database, and none is admitted beside it: refused with a message naming the other one."""
        host, pid = socket.gethostname(), os.getpid()
        with self.db.session() as session:
            if self.postgres:
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": REPLICA_LOCK_KEY})
            now = self._now(session)
            self._forget_dead(session, host, now)
            session.add(
                Replica(
                    id=self.replica_id,
                    host=host,
                    pid=pid,
                    vector_store=vector_store,
                    started_at=now,
                    seen_at=now,
                )
            )
            session.flush()
            self._admit(session, vector_store, now)

    def check(self, vector_store: str) -> None:
        """register's refusal, without registering (`mmrag serve` says it before it starts)."""
        with self.db.session() as session:
            now = self._now(session)
            self._forget_dead(session, socket.gethostname(), now)
            self._admit(session, vector_store, now)

    def _admit(self, session: Session, vector_store: str, now: datetime) -> None:
        alive = session.scalars(
            select(Replica).where(Replica.id != self.replica_id, Replica.seen_at >= now - self.lease)
        ).all()
        single = [r for r in alive if single_writer(r.vector_store)]
        if alive and (single_writer(vector_store) or single):
            other = (single or alive)[0]
            backend = other.vector_store if single else vector_store
            raise SecondWriterRefused(
                f"another mmrag serve ({other.host}, pid {other.pid}) writes this database with "
                f"{_described(backend)}, which keeps one writer: stop it first, or give every replica "
                "index.backend=milvus on a Milvus server they share (index.milvus.uri=http://HOST:19530)"
            )

    def heartbeat(self) -> None:
        with self.db.session() as session:
            now = self._now(session)
            session.execute(update(Replica).where(Replica.id == self.replica_id).values(seen_at=now))

    def unregister(self) -> None:
        with self.db.session() as session:
            session.execute(delete(Replica).where(Replica.id == self.replica_id))

    def _forget_dead(self, session: Session, host: str, now: datetime) -> None:
        """Replicas whose lease ran out long ago, and earlier processes of this host that are gone (a
        restart): their rows are dropped and their jobs' leases end now, so a restarted server resumes its
        job at once instead of waiting out the lease."""
        dead = [
            r.id for r in session.scalars(select(Replica).where(Replica.host == host)) if _earlier_process(r)
        ]
        dead += list(session.scalars(select(Replica.id).where(Replica.seen_at < now - 10 * self.lease)))
        if dead:
            session.execute(update(Job).where(Job.owner.in_(dead)).values(lease_until=None))
            session.execute(delete(Replica).where(Replica.id.in_(dead)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
