"""Prometheus metrics of one service instance, in its own registry (two apps in one process never clash).

- mmrag_http_requests_total{method,route,status} and mmrag_http_request_duration_seconds{method,route}:
  `route` is the route template ("/v1/items/{item_id}"), never the raw path, so a client cannot blow up
  the number of series; paths that match no route are counted as "unmatched".
- mmrag_stage_duration_seconds{operation,stage}: operation query | ask | ingest; stage decode | caption |
  ocr | embed | search | fuse | generate. Queries observe each stage call; ingest jobs observe, per job,
  the seconds their Vectoriser spent in each stage.
- mmrag_ingest_queue_depth (jobs waiting), mmrag_ingest_jobs_running, mmrag_ingest_jobs_total{status},
  mmrag_ingest_files_total{status}.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests range from a health check (~1 ms) to an ask with a slow VLM (tens of seconds).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    120,
    600,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmrag_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mmrag_http_request_duration_seconds",
            "Time from request to the end of the response",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stages = Histogram(
            "mmrag_stage_duration_seconds",
            "Seconds per pipeline stage (ingest: per job)",
            ["operation", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "mmrag_ingest_queue_depth", "Ingest jobs waiting to run", registry=self.registry
        )
        self.jobs_running = Gauge("mmrag_ingest_jobs_running", "Ingest jobs running", registry=self.registry)
        self.jobs = Counter("mmrag_ingest_jobs", "Ingest jobs finished", ["status"], registry=self.registry)
        self.files = Counter(
            "mmrag_ingest_files", "Files processed by ingest jobs", ["status"], registry=self.registry
        )

    def stage(self, operation: str, stage: str, seconds: float) -> None:
        self.stages.labels(operation=operation, stage=stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """Pure ASGI middleware that counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: dict[int, str] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        # id(route) -> its full path template, for routers included under a prefix: depending on the
        # FastAPI version, the route object in the scope does or does not carry the prefix in its path
        self.templates = templates or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = self.templates.get(id(route)) or getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - start)
