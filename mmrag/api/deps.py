"""Dependencies shared by the routes: the service, API-key auth and scopes, readiness, path parameters."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from mmrag.api.errors import ApiError
from mmrag.api.schemas import COLLECTION_PATTERN
from mmrag.api.security import API_KEY_HEADER, FULL_ACCESS, KeyScope, presented_key
from mmrag.api.service import CollectionHandle, Service

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")


def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


ServiceDep = Annotated[Service, Depends(get_service)]


def _not_ready(service: Service) -> ApiError:
    detail = service.load_error or "the service is still loading its models and indexes"
    return ApiError(503, "not_ready", detail, headers={"Retry-After": "5"})


async def require_api_key(
    service: ServiceDep,
    api_key: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> KeyScope:
    """The scope of the key the request presents: a key of the config, else one made at run time."""
    if not service.keys.enabled:
        return FULL_ACCESS
    key = presented_key(api_key, f"Bearer {bearer.credentials}" if bearer else None)
    scope = service.keys.verify(key)
    if scope is None and key:
        if not service.ready.is_set():
            raise _not_ready(service)  # the keys made at run time are in the database, not open yet
        # off the pool that runs the models: a key check must not queue behind a search
        scope = await asyncio.to_thread(service.key_store.scope_of, key)
    if scope is None:
        message = (
            "invalid API key" if key else f"missing API key: send it as {API_KEY_HEADER} or a bearer token"
        )
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})
    return scope


ScopeDep = Annotated[KeyScope, Depends(require_api_key)]


async def require_ready(service: ServiceDep) -> None:
    if not service.ready.is_set():
        raise _not_ready(service)


async def require_admin(scope: ScopeDep) -> KeyScope:
    if not scope.admin:
        raise ApiError(403, "forbidden", "this needs an admin key (api.api_key_hashes, or admin: true)")
    return scope


CollectionName = Annotated[
    str,
    Path(
        pattern=COLLECTION_PATTERN,
        description="Collection name: letters, digits, '_', '.', '-'; up to 64 characters",
        examples=["default"],
    ),
]


def no_collection(name: str) -> ApiError:
    return ApiError(404, "not_found", f"no collection {name!r}: nothing was ever indexed into it")


async def existing_collection(service: Service, name: str, scope: KeyScope) -> CollectionHandle:
    """The collection, when it exists and the key may see it; both fail alike, so a key cannot tell a
    collection it may not see from one that does not exist."""
    if not scope.allows(name):
        raise no_collection(name)
    handle = await service.run(service.handle, name)
    if handle is None:
        raise no_collection(name)
    return handle


def check_writable(scope: KeyScope, name: str) -> None:
    """Uploads may create the collection: the key must name it (or "*"); answered alike whether it exists."""
    if not scope.allows(name):
        raise ApiError(
            403,
            "forbidden",
            f"this API key may not write to collection {name!r}; it may use: {scope.describe() or 'none'}",
        )
