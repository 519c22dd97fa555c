"""The `jobs` table: background ingest runs of the REST service, kept so their status outlives a restart."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from mmrag.store.db import Database
from mmrag.store.models import Job, utcnow

UNFINISHED = ("queued", "running")


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, collection: str, kind: str, inputs: list[dict[str, Any]], options: dict[str, Any]
    ) -> Job:
        job = Job(
            id=uuid.uuid4().hex,
            collection=collection,
            kind=kind,
            status="queued",
            inputs=inputs,
            options=options,
            counts={},
            files=[],
            created_at=utcnow(),
        )
        with self.db.session() as session:
            session.add(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self.db.session() as session:
            return session.get(Job, job_id)

    def update(self, job_id: str, **fields: Any) -> None:
        with self.db.session() as session:
            job = session.get(Job, job_id)
            if job is not None:
                for name, value in fields.items():
                    setattr(job, name, value)

    def unfinished(self) -> list[str]:
        with self.db.session() as session:
            return list(
                session.scalars(select(Job.id).where(Job.status.in_(UNFINISHED)).order_by(Job.created_at))
            )
