"""The FastAPI application, `create_app(settings)`; models, indexes and the ingest worker live in its
lifespan.

Loading happens in the background: /health answers at once, /ready (and every /v1 route) says 503 until
the models and the default collection are loaded.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from mmrag import __version__
from mmrag.api.deps import require_api_key, require_ready
from mmrag.api.errors import install_error_handlers
from mmrag.api.limits import BodySizeLimit
from mmrag.api.metrics import RequestMetrics
from mmrag.api.routes import documents, health, items, jobs, keys, search
from mmrag.api.schemas import AskRequest, QueryRequest, UploadOptions
from mmrag.api.service import Service, available_roads
from mmrag.api.web import install_web_page
from mmrag.settings import Settings

DESCRIPTION = """Index your images, scans, PDFs and text files and search them with text or images.

Every `/v1` call needs an API key (`X-API-Key: <key>` or `Authorization: Bearer <key>`) when the server
has keys configured. A key reaches only its collections: items, documents, jobs, queries and answers of any
other collection answer 404, as if it did not exist. Admin keys also make and revoke keys (`/v1/keys`).
Errors are JSON: `{"error": code, "message": what is wrong}`.
"""


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().run_in_executor(service.executor, service.load)
        try:
            yield
        finally:
            await loading  # a load in progress finishes before the shutdown can release what it built
            await asyncio.to_thread(service.close)

    app = FastAPI(
        title="mmrag",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)

    app.include_router(health.router)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key), Depends(require_ready)])
    templates: dict[int, str] = {}
    for module in (documents, search, jobs, items, keys):
        v1.include_router(module.router)
        templates.update({id(route): "/v1" + route.path for route in module.router.routes})  # type: ignore[attr-defined]
    app.include_router(v1)
    install_web_page(app)  # `/`: search, ask and add files in a browser, through /v1

    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.api.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.api.max_upload_bytes)
    app.add_middleware(
        RequestMetrics, metrics=service.metrics, templates=templates
    )  # outermost: it also counts the 413s
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema, plus the request models that query, ask and uploads parse themselves (JSON or
    multipart), with the image roads narrowed to those this server can take."""
    if app.openapi_schema:
        return app.openapi_schema
    # a copy: routes share their openapi_extra dicts between apps, and this one gets its own limits
    schema = copy.deepcopy(
        get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (QueryRequest, AskRequest, UploadOptions):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components[model.__name__] = model_schema
    _this_servers_limits(schema, settings)
    app.openapi_schema = schema
    return schema


def _this_servers_limits(schema: dict[str, Any], settings: Settings) -> None:
    """What depends on the settings, as this server has them: the image roads it can take, the number of
    files an upload may hold."""
    components = schema["components"]["schemas"]
    roads = available_roads(settings)
    for name in ("UploadOptions", "FolderIngestRequest"):
        for alternative in components[name]["properties"]["road"]["anyOf"]:
            if "enum" in alternative:
                alternative["enum"] = roads
    upload = schema["paths"]["/v1/collections/{collection}/documents"]["post"]["requestBody"]
    files = upload["content"]["multipart/form-data"]["schema"]["properties"]["files"]
    files["maxItems"] = settings.api.max_files_per_request
