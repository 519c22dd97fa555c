"""Query and ask: text and/or an image (base64 in JSON, or a multipart upload), k, filters."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from mmrag.api import answering
from mmrag.api.deps import CollectionName, ScopeDep, ServiceDep, existing_collection
from mmrag.api.errors import ApiError, documented, from_validation_error
from mmrag.api.schemas import AskRequest, AskResponse, HitOut, QueryFilters, QueryRequest, QueryResponse
from mmrag.api.service import FoundItem, Service
from mmrag.errors import ExtractionError
from mmrag.filters import Filters
from mmrag.ingest.images import load_model_image

router = APIRouter(tags=["search"])
M = TypeVar("M", bound=BaseModel)

_MAX_FORM_FIELD_BYTES = 64 * 1024
# One server-sent event of a streamed answer (in OpenAPI 3.1 a text/event-stream's schema is one event's)
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["sources", "token", "error", "done"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "JSON: sources, a list of SourceOut; token, {text}; error, {error, message}; "
            "done, the AskResponse",
        },
    },
}


def _form_schema(model: type[BaseModel], text_field: str) -> dict[str, Any]:
    """The multipart form of a JSON request: the same fields, `filters` as a JSON part, `image` a file."""
    properties: dict[str, Any] = {
        text_field: {"type": "string", "minLength": 1, "maxLength": 4000},
        "k": {"type": "integer", "minimum": 1, "maximum": 100 if model is QueryRequest else 50},
        "filters": {"$ref": "#/components/schemas/QueryFilters"},
        "fusion": {"type": "string", "enum": ["calibrated", "rrf", "raw"]},
        "image": {"type": "string", "format": "binary", "minLength": 1, "description": "The query image"},
    }
    if model is AskRequest:
        properties["stream"] = {"type": "boolean"}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if model is AskRequest:
        schema["required"] = [text_field]
    else:
        schema["anyOf"] = [{"required": [text_field]}, {"required": ["image"]}]
    return schema


def _body(model: type[BaseModel], text_field: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
                "multipart/form-data": {
                    "schema": _form_schema(model, text_field),
                    "encoding": {"filters": {"contentType": "application/json"}},
                },
            },
        }
    }


async def read_request(request: Request, model: type[M]) -> tuple[M, bytes | None]:
    """The request as `model`, from JSON (image as base64) or multipart (image as a file), and the image's
    bytes if there is one."""
    content_type = parse_options_header(request.headers.get("content-type", ""))[0].decode("latin-1")
    try:
        if content_type == "multipart/form-data":
            return await _from_form(request, model)
        if content_type in ("", "application/json") or content_type.endswith("+json"):
            return await _from_json(request, model)
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the request body ended early") from None
    raise ApiError(
        415, "unsupported_media_type", f"send application/json or multipart/form-data, not {content_type}"
    )


async def _from_json(request: Request, model: type[M]) -> tuple[M, bytes | None]:
    raw = await request.body()
    if not raw.strip():
        raise ApiError(422, "invalid_request", f"empty body: send a JSON {model.__name__}")
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    encoded = getattr(parsed, "image_base64", None)
    if not encoded:
        return parsed, None
    try:
        return parsed, base64.b64decode(
            encoded.split(",", 1)[-1] if encoded.startswith("data:") else encoded, validate=True
        )
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_request", "image_base64 is not valid base64") from None


async def _from_form(request: Request, model: type[M]) -> tuple[M, bytes | None]:
    form = await request.form(max_files=1, max_fields=8, max_part_size=_MAX_FORM_FIELD_BYTES)
    fields: dict[str, Any] = {}
    image: bytes | None = None
    known = set(model.model_fields) - {"image_base64"}
    for name, value in form.multi_items():
        if name == "image":
            if not isinstance(value, UploadFile):
                raise ApiError(422, "invalid_request", "form field 'image' must be a file")
            image = await value.read()
        elif isinstance(value, UploadFile):
            raise ApiError(422, "invalid_request", f"form field {name!r} must be text, not a file")
        elif name not in known:
            allowed = ", ".join(sorted(known | {"image"}))
            raise ApiError(422, "invalid_request", f"unknown form field {name!r}; the fields are: {allowed}")
        elif name == "filters":
            try:
                fields[name] = json.loads(value)
            except ValueError:
                raise ApiError(422, "invalid_request", "form field 'filters' is not JSON") from None
        else:
            fields[name] = _form_value(name, value)
    if image is not None and not image:
        raise ApiError(422, "invalid_request", "the uploaded query image is empty")
    try:
        return model.model_validate(fields, context={"image_uploaded": image is not None}), image
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def _form_value(name: str, value: str) -> Any:
    """A form field as the type its model wants: the models are strict (no "yes" for true), and a form
    carries text, so integers and booleans are read here, exactly."""
    if name == "k":
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", value.strip()):
            raise ApiError(422, "invalid_request", f"form field 'k' must be an integer, got {value[:50]!r}")
        return int(value)
    if name == "stream":
        if value.strip().lower() not in ("true", "false"):
            raise ApiError(
                422, "invalid_request", f"form field 'stream' must be true or false, got {value[:50]!r}"
            )
        return value.strip().lower() == "true"
    return value


def decode_image(service: Service, data: bytes, operation: str) -> Image.Image:
    start = time.perf_counter()
    try:
        return load_model_image(data, service.settings.ingest.max_image_pixels)
    except ExtractionError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):  # not an image at all, as an upload's 415
            raise ApiError(
                415,
                "unsupported_content",
                "the query image is not an image (JPEG, PNG, WebP, GIF, BMP, TIFF)",
            ) from None
        raise
    finally:
        service.metrics.stage(operation, "decode", time.perf_counter() - start)


def to_filters(service: Service, filters: QueryFilters | None) -> Filters | None:
    if filters is None:
        return None
    data_dir = service.settings.data_dir.resolve()
    return Filters.of(
        modalities=filters.modality,
        document_ids=filters.document_ids,
        path_prefixes=[str(data_dir / p) if not p.startswith("/") else p for p in filters.paths or ()],
        metadata=filters.metadata,
    )


def hit_out(service: Service, found: FoundItem) -> HitOut:
    hit = found.hit
    return HitOut(
        item_id=hit.item_id,
        document_id=found.document.id,
        score=hit.score,
        modality=hit.modality,
        path=service.public_path(hit.path),
        page=hit.page,
        bbox=hit.bbox,
        text=hit.text,
        metadata=found.document.meta or {},
        ranks=hit.ranks,
        scores=hit.scores,
        calibrated=hit.calibrated,
        more_on_page=hit.more_on_page,
        also_in=[{**copy, "path": service.public_path(copy["path"])} for copy in hit.also_in],
        list_page=hit.list_page,
        image_url=f"/v1/items/{hit.item_id}/image" if hit.modality != "text" else None,
    )


@router.post(
    "/collections/{collection}/query",
    response_model=QueryResponse,
    summary="Search a collection with text and/or an image",
    description=(
        "JSON (`image_base64`) or multipart (`image` file). Every active space and index is searched and "
        "the lists are fused into one ranking; each hit says which lists found it, its rank and raw score "
        "in each."
    ),
    openapi_extra=_body(QueryRequest, "text"),
    responses=documented(400, 401, 404, 409, 413, 415, 422, 503),
)
async def query(
    request: Request, collection: CollectionName, service: ServiceDep, scope: ScopeDep
) -> QueryResponse:
    start = time.perf_counter()
    req, image_bytes = await read_request(request, QueryRequest)
    handle = await existing_collection(service, collection, scope)
    image = await service.run(decode_image, service, image_bytes, "query") if image_bytes else None
    found = await service.run(
        service.search,
        handle,
        text=req.text,
        image=image,
        k=req.k,
        fusion=req.fusion,
        filters=to_filters(service, req.filters),
    )
    return QueryResponse(
        collection=collection,
        hits=[hit_out(service, f) for f in found],
        took_ms=round((time.perf_counter() - start) * 1000, 3),
    )


@router.post(
    "/collections/{collection}/ask",
    summary="Answer a question from the collection, with citations and sources",
    description=(
        "Retrieves the k best items, then a VLM answers from them, citing sources by number. With "
        "`stream: true` the answer comes as server-sent events. 501 when answer generation is not installed."
    ),
    openapi_extra=_body(AskRequest, "question"),
    response_model=AskResponse,
    responses={
        200: {
            "description": "The answer (JSON), or server-sent events when stream=true: `sources`, `token` "
            '({"text": ...}) per piece, then `done` with the AskResponse',
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
        },
        **documented(400, 401, 404, 409, 413, 415, 422, 501, 503),
    },
)
async def ask(request: Request, collection: CollectionName, service: ServiceDep, scope: ScopeDep) -> Any:
    req, image_bytes = await read_request(request, AskRequest)
    handle = await existing_collection(service, collection, scope)
    if not answering.available():
        raise ApiError(501, "not_implemented", "answer generation is not installed on this server")
    image = await service.run(decode_image, service, image_bytes, "ask") if image_bytes else None
    return await answering.answer(service, handle, req, image)
