"""Liveness, readiness and Prometheus metrics: outside /v1, without an API key (for probes and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from mmrag.api.deps import ServiceDep
from mmrag.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Models and indexes are loaded",
    responses={503: {"model": Readiness, "description": "Still loading, or loading failed"}},
)
async def ready(service: ServiceDep) -> Response:
    if service.ready.is_set():
        return JSONResponse(Readiness(ready=True, models=service.loaded_models()).model_dump())
    detail = service.load_error or "loading models and indexes"
    return JSONResponse(Readiness(ready=False, detail=detail).model_dump(), status_code=503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"}},
)
async def metrics(service: ServiceDep) -> Response:
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)
