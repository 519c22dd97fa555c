"""One JSON shape for every error: {"error": code, "message": words, "details": [...]?}.

Client mistakes are 4xx with a message naming the problem; a 500 means a bug in the service, and its body
says only that (the traceback goes to the log). No message shows a path under the server's data dir: the
service rewrites them relative to it (an upload's MuPDF error names the file it was reading).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmrag.collection import CollectionLocked
from mmrag.errors import ConfigError, ExtractionError, IndexCorruptError, MmragError, ModelMismatchError

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    501: "not_implemented",
    503: "not_ready",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, dict(headers or {})


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's errors without the offending input (it may be large, or an uploaded image)."""
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": err.get("type"),
        }
        for err in errors
    ]


def invalid(details: list[dict[str, Any]], where: str = "") -> ApiError:
    parts = [f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5]]
    return ApiError(422, "invalid_request", f"invalid request{where}: " + "; ".join(parts), details)


def from_validation_error(exc: ValidationError, where: str = "") -> ApiError:
    return invalid(validation_details(exc.errors()), where)


def _status_of(exc: MmragError) -> tuple[int, str]:
    if isinstance(exc, (ModelMismatchError, CollectionLocked)):
        return 409, "conflict"
    if isinstance(exc, ExtractionError):
        return 422, "unreadable_input"
    if isinstance(exc, (ConfigError, IndexCorruptError)):
        return 503, "service_unavailable"  # the server's setup, not the request, is wrong
    if isinstance(exc, ValueError):  # e.g. VectorInputError
        return 422, "invalid_request"
    return 400, "bad_request"


def _redact(request: Request, message: str) -> str:
    service = getattr(request.app.state, "service", None)
    return service.redact(message) if service is not None else message


_OPERATIONS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})


def _allowed_methods(request: Request) -> str | None:
    """Every method the schema documents for this path: Starlette's 405 names only the first route's,
    though one path may be served by several routes (GET and POST /v1/keys)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations if method in _OPERATIONS}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return ", ".join(sorted(methods)) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, _redact(request, exc.message), exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = invalid(validation_details(list(exc.errors())))
        return error_response(err.status, err.code, err.message, err.details)

    @app.exception_handler(MmragError)
    async def _mmrag_error(request: Request, exc: MmragError) -> JSONResponse:
        status, code = _status_of(exc)
        return error_response(status, code, _redact(request, str(exc)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server log has the details")


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or invalid API key",
    403: "Not allowed",
    404: "Not found",
    409: "Conflicts with the collection's state (another writer, another model)",
    413: "Over a size, file-count or page-count limit",
    415: "Unsupported content type or file content",
    422: "Invalid request: the message names the field",
    501: "Not available on this server",
    503: "Still loading, or the server's setup cannot serve this",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error statuses, all with the ErrorBody shape."""
    from mmrag.api.schemas import ErrorBody

    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}
