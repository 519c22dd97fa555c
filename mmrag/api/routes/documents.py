"""Uploads (one background job each), server-side folder ingest, listing and deleting documents.

A key reaches only its collections: reads of others answer 404 as if they did not exist; an upload into a
collection the key does not name is 403 whether or not it exists (an upload may create it). Server-side
folder ingest reads the server's own files: it needs an admin key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from mmrag.api.deps import (
    CollectionName,
    ScopeDep,
    ServiceDep,
    check_writable,
    existing_collection,
    require_admin,
)
from mmrag.api.errors import ApiError, documented, from_validation_error
from mmrag.api.schemas import (
    AcceptedFile,
    CollectionList,
    CollectionOut,
    DeletedDocument,
    DocumentList,
    DocumentOut,
    FolderIngestRequest,
    JobAccepted,
    UploadOptions,
)
from mmrag.api.security import KeyScope
from mmrag.api.service import Service
from mmrag.api.uploads import ReceivedFile, UploadError, receive_multipart, remove_tree, store_upload
from mmrag.blobs import key_of_location
from mmrag.collection import CollectionLocked
from mmrag.errors import ExtractionError
from mmrag.ingest.discover import sniff_kind
from mmrag.ingest.items import FileKind
from mmrag.ingest.mupdf import pymupdf
from mmrag.store import items as item_rows
from mmrag.store.models import Document

router = APIRouter(tags=["documents"])

# Long enough for a delete to wait out another delete; an ingest job holds the lock far longer.
_DELETE_LOCK_WAIT_S = 5.0

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "additionalProperties": False,
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 32,  # api.max_files_per_request: app.py puts in this server's
                            "items": {"type": "string", "format": "binary", "minLength": 1},
                            "description": "Images (JPEG, PNG, WebP, GIF, BMP, TIFF), PDFs, .txt/.md/.rst "
                            "files; typed by their content",
                        },
                        "options": {"$ref": "#/components/schemas/UploadOptions"},
                    },
                },
                "encoding": {
                    "files": {"contentType": "application/octet-stream"},
                    "options": {"contentType": "application/json"},
                },
            }
        },
    }
}


@router.post(
    "/collections/{collection}/documents",
    status_code=202,
    response_model=JobAccepted,
    summary="Upload files; they are indexed by a background job",
    description=(
        "Multipart upload of one or more files in the field `files`, with optional JSON `options` "
        "(road, metadata). Answers at once with a job id: poll `GET /v1/jobs/{id}` for the outcome of every "
        "file. The body is limited to api.max_upload_bytes (413 as soon as it streams past it), "
        "api.max_files_per_request files and api.max_pdf_pages_per_request PDF pages."
    ),
    openapi_extra=_UPLOAD_BODY,
    responses=documented(400, 401, 403, 409, 413, 415, 422, 503),
)
async def upload_documents(
    request: Request, collection: CollectionName, service: ServiceDep, scope: ScopeDep
) -> Any:
    check_writable(scope, collection)
    api = service.settings.api
    incoming = service.incoming_dir()
    try:
        try:
            form = await receive_multipart(
                request,
                incoming,
                file_field="files",
                text_fields={"options"},
                max_files=api.max_files_per_request,
            )
        except ClientDisconnect:
            # The client went away, or BodySizeLimit has already answered 413: nobody reads this.
            return Response(status_code=400)
        except UploadError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        if not form.files:
            raise ApiError(422, "no_files", "no files: send one or more files in the multipart field 'files'")
        options = _upload_options(form.fields.get("options"))
        _check_road(service, options.road)
        await service.run(service.handle, collection, True)  # a model mismatch is refused now, not in the job
        stored = await service.run(_check_and_store, service, collection, form.files)
    finally:
        await asyncio.to_thread(remove_tree, incoming)
    inputs = [
        {"name": f.name, "client_name": f.client_name, "path": location, "kind": kind.value, "size": f.size}
        for f, location, kind in stored
    ]
    job = await service.run(
        service.job_store.create, collection, "upload", inputs, options.model_dump(exclude_none=True)
    )
    service.worker.submit(job.id)
    return JobAccepted(
        job_id=job.id,
        status="queued",
        collection=collection,
        files=[
            AcceptedFile(name=f.name, kind=kind.value, size=f.size, sha256=f.sha256) for f, _, kind in stored
        ],
        status_url=f"/v1/jobs/{job.id}",
    )


def _upload_options(raw: str | None) -> UploadOptions:
    if raw is None or not raw.strip():
        return UploadOptions()
    try:
        return UploadOptions.model_validate_json(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, " (form field 'options')") from None


def _check_road(service: Service, road: str | None) -> None:
    if road in ("clip", "both") and service.clip is None:
        raise ApiError(
            422, "invalid_request", f"road {road!r} needs the CLIP space, which this server has off"
        )
    if road in ("caption", "both") and (service.text is None or (service.captioner or service.ocr) is None):
        raise ApiError(
            422,
            "invalid_request",
            f"road {road!r} needs the text space and a captioner or OCR, which this server does not have",
        )


def _check_and_store(
    service: Service, collection: str, files: list[ReceivedFile]
) -> list[tuple[ReceivedFile, str, FileKind]]:
    """Type every file by its content, count PDF pages, then move the files to their permanent place."""
    limit = service.settings.api.max_pdf_pages_per_request
    kinds: list[FileKind] = []
    pages = 0
    for received in files:
        try:
            kind = sniff_kind(received.path)
        except ExtractionError as exc:
            raise ApiError(422, "unreadable_input", f"{received.client_name!r}: {exc}") from None
        if kind is None:
            raise ApiError(
                415,
                "unsupported_content",
                f"{received.client_name!r} is not an image, a PDF or a text file (files are typed by their "
                "content; text files also need a .txt, .md, .markdown or .rst name)",
            )
        if kind is FileKind.PDF:
            pages += _pdf_pages(received.path)
            if pages > limit:
                raise ApiError(
                    413,
                    "too_many_pages",
                    f"the PDFs in this request have more than {limit} pages (api.max_pdf_pages_per_request)",
                )
        kinds.append(kind)
    pairs = zip(files, kinds, strict=True)
    return [(f, store_upload(f, service.blobs, collection), kind) for f, kind in pairs]


def _pdf_pages(path: Path) -> int:
    """0 for a PDF that cannot be opened: the job reports why, with the other files' outcomes."""
    try:
        with pymupdf.open(path, filetype="pdf") as doc:
            return int(doc.page_count)
    except Exception:
        return 0


@router.post(
    "/collections/{collection}/folders",
    status_code=202,
    response_model=JobAccepted,
    summary="Index a folder on the server (only under api.allowed_roots; needs an admin key)",
    responses=documented(400, 401, 403, 404, 409, 422, 503),
    dependencies=[Depends(require_admin)],
)
async def ingest_folder(
    body: FolderIngestRequest, collection: CollectionName, service: ServiceDep
) -> JobAccepted:
    roots = [root.resolve() for root in service.settings.api.allowed_roots]
    if not roots:
        raise ApiError(403, "forbidden", "server-side folder ingest is off: configure api.allowed_roots")
    folder = Path(body.path).resolve()  # the body's validator made sure it is absolute and has no NUL
    if not any(folder == root or folder.is_relative_to(root) for root in roots):
        raise ApiError(403, "forbidden", f"{body.path!r} is not under an allowed root (api.allowed_roots)")
    if not folder.is_dir():
        raise ApiError(404, "not_found", f"no folder {body.path!r} on the server")
    _check_road(service, body.road)
    await service.run(service.handle, collection, True)
    options = body.model_dump(exclude_none=True, exclude={"path"})
    job = await service.run(
        service.job_store.create, collection, "folder", [{"name": str(folder), "path": str(folder)}], options
    )
    service.worker.submit(job.id)
    return JobAccepted(
        job_id=job.id, status="queued", collection=collection, files=[], status_url=f"/v1/jobs/{job.id}"
    )


@router.get(
    "/collections",
    response_model=CollectionList,
    summary="Collections and their sizes",
    responses=documented(401, 503),
)
async def list_collections(service: ServiceDep, scope: ScopeDep) -> CollectionList:
    """Only the collections the key may see."""
    return await service.run(_collections, service, scope)


def _collections(service: Service, scope: KeyScope) -> CollectionList:
    assert service.db is not None
    docs, items = item_rows.collection_sizes(service.db)
    return CollectionList(
        collections=[
            CollectionOut(name=name, documents=docs.get(name, 0), items=items.get(name, 0))
            for name in scope.visible(service.collection_names())
        ]
    )


@router.get(
    "/collections/{collection}/documents",
    response_model=DocumentList,
    summary="Documents of a collection, with their status and item counts",
    responses=documented(401, 404, 422, 503),
)
async def list_documents(
    collection: CollectionName,
    service: ServiceDep,
    scope: ScopeDep,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[str | None, Query(pattern="^(indexed|failed)$")] = None,
) -> DocumentList:
    await existing_collection(service, collection, scope)
    return await service.run(_documents, service, collection, offset, limit, status)


def _documents(
    service: Service, collection: str, offset: int, limit: int, status: str | None
) -> DocumentList:
    assert service.db is not None
    total, rows = item_rows.list_documents(service.db, collection, offset, limit, status)
    return DocumentList(
        collection=collection,
        total=total,
        offset=offset,
        documents=[document_out(service, doc, count) for doc, count in rows],
    )


def document_out(service: Service, doc: Document, items: int) -> DocumentOut:
    return DocumentOut(
        id=doc.id,
        collection=doc.collection,
        path=service.public_path(doc.path),
        name=Path(doc.path).name,
        kind=doc.kind,
        status=doc.status,
        error=service.redact(doc.error) if doc.error else doc.error,
        size=doc.size,
        items=items,
        metadata=doc.meta or {},
        created_at=doc.created_at,
        updated_at=doc.updated_at,
    )


@router.delete(
    "/collections/{collection}/documents/{document_id}",
    response_model=DeletedDocument,
    summary="Delete a document, its items and (for uploads) its file",
    responses=documented(401, 404, 409, 422, 503),
)
async def delete_document(
    collection: CollectionName,
    document_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)],
    service: ServiceDep,
    scope: ScopeDep,
) -> DeletedDocument:
    handle = await existing_collection(service, collection, scope)
    return await service.run(_delete, service, handle, document_id)


def _delete(service: Service, handle: Any, document_id: int) -> DeletedDocument:
    assert service.db is not None
    doc = item_rows.document_in(service.db, handle.name, document_id)
    if doc is None:
        raise ApiError(404, "not_found", f"no document {document_id} in collection {handle.name!r}")
    if not handle.write_lock.acquire(timeout=_DELETE_LOCK_WAIT_S):
        raise ApiError(
            409,
            "conflict",
            f"collection {handle.name!r} is being written by an ingest job; retry when it is done",
            headers={"Retry-After": "10"},
        )
    try:
        with handle.collection.writer():
            handle.collection.delete_documents([document_id])
            handle.collection.save()
    except CollectionLocked as exc:
        raise ApiError(409, "conflict", str(exc), headers={"Retry-After": "10"}) from None
    finally:
        handle.write_lock.release()
    service.collection_changed(handle)
    _remove_upload(service, handle.name, doc.path)
    return DeletedDocument(id=document_id, collection=handle.name)


def _remove_upload(service: Service, collection: str, path: str) -> None:
    """An uploaded file belongs to its one document (its path names the collection): it goes with it."""
    key = key_of_location(service.blobs, path)
    if key is None or not key.startswith(f"uploads/{collection}/"):
        return  # indexed from a folder: the user's file, not ours
    service.blobs.delete(key)
