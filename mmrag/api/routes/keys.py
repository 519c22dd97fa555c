"""API keys made at run time: an admin key makes (the new key is shown once), lists and revokes them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from mmrag.api.deps import ServiceDep, require_admin
from mmrag.api.errors import ApiError, documented
from mmrag.api.schemas import KeyCreated, KeyList, KeyOut, KeyRequest, KeyRevoked
from mmrag.store.models import ApiKey

router = APIRouter(tags=["keys"], dependencies=[Depends(require_admin)])

KeyId = Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="The key's id (not the key)")]


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id, name=row.name, collections=row.collections, admin=row.admin, created_at=row.created_at
    )


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    summary="Make an API key scoped to collections (needs an admin key)",
    description="The answer holds the key itself, this once; the server keeps only its sha256.",
    responses=documented(400, 401, 403, 409, 422, 503),
)
async def create_key(body: KeyRequest, service: ServiceDep) -> KeyCreated:
    if not service.keys.enabled:
        raise ApiError(
            409,
            "conflict",
            "authentication is off (no key in api.api_key_hashes or api.keys): a key made now would not be "
            "checked; configure an admin key first",
        )
    key, row = await service.run(service.key_store.create, body.name, body.collections, body.admin)
    return KeyCreated(**_out(row).model_dump(), key=key)


@router.get(
    "/keys",
    response_model=KeyList,
    summary="The keys made through the API (needs an admin key)",
    responses=documented(401, 403, 503),
)
async def list_keys(service: ServiceDep) -> KeyList:
    return KeyList(keys=[_out(row) for row in await service.run(service.key_store.all)])


@router.delete(
    "/keys/{key_id}",
    response_model=KeyRevoked,
    summary="Revoke a key made through the API (needs an admin key)",
    description="It is refused from the next request on, by every server on this database.",
    responses=documented(401, 403, 404, 422, 503),
)
async def revoke_key(key_id: KeyId, service: ServiceDep) -> KeyRevoked:
    if not await service.run(service.key_store.revoke, key_id):
        raise ApiError(404, "not_found", f"no key {key_id}")
    return KeyRevoked(id=key_id)
