"""Ingest jobs: status, counts and the outcome of every file (a job of a collection the key may not see
answers 404, like one that does not exist)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from mmrag.api.deps import ScopeDep, ServiceDep
from mmrag.api.errors import ApiError, documented
from mmrag.api.schemas import JobFile, JobStatus
from mmrag.api.service import Service

router = APIRouter(tags=["jobs"])


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="An ingest job's status",
    description="While the job runs, `files` and `counts` cover the files finished so far.",
    responses=documented(401, 404, 422, 503),
)
async def get_job(
    job_id: Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="The id an upload answered with")],
    service: ServiceDep,
    scope: ScopeDep,
) -> JobStatus:
    job = await service.run(service.job_store.get, job_id)
    if job is None or not scope.allows(job.collection):
        raise ApiError(404, "not_found", f"no job {job_id}")
    return JobStatus(
        id=job.id,
        collection=job.collection,
        kind=job.kind,  # type: ignore[arg-type]
        status=job.status,  # type: ignore[arg-type]
        counts=job.counts or {},
        files=[
            JobFile(**{**entry, "reason": _redacted(service, entry.get("reason"))})
            for entry in job.files or []
        ],
        error=_redacted(service, job.error),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _redacted(service: Service, text: str | None) -> str | None:
    """Jobs store their reasons without server paths already; rows written before that are cleaned here."""
    return service.redact(text) if text else text
