"""Dependencies shared by the routes: the service, API-key auth, readiness, path parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from mmrag.api.errors import ApiError
from mmrag.api.schemas import COLLECTION_PATTERN
from mmrag.api.security import API_KEY_HEADER, presented_key
from mmrag.api.service import CollectionHandle, Service

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_api_key(
    service: ServiceDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    if not service.keys.enabled:
        return
    key = presented_key(api_key, f"Bearer {bearer.credentials}" if bearer else None)
    if not service.keys.verify(key):
        message = (
            "invalid API key" if key else f"missing API key: send it as {API_KEY_HEADER} or a bearer token"
        )
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


async def require_ready(service: ServiceDep) -> None:
    if not service.ready.is_set():
        detail = service.load_error or "the service is still loading its models and indexes"
        raise ApiError(503, "not_ready", detail, headers={"Retry-After": "5"})


CollectionName = Annotated[
    str,
    Path(
        pattern=COLLECTION_PATTERN,
        description="Collection name: letters, digits, '_', '.', '-'; up to 64 characters",
        examples=["default"],
    ),
]


async def existing_collection(service: Service, name: str) -> CollectionHandle:
    handle = await service.run(service.handle, name)
    if handle is None:
        raise ApiError(404, "not_found", f"no collection {name!r}: nothing was ever indexed into it")
    return handle
