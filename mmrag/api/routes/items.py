"""Items (an image, a text chunk, a rendered page) by id, and their pictures.

An item of a collection the key may not see answers 404 exactly like an id that does not exist. Pictures
are read through mmrag.api.files: only under the data dir and api.allowed_roots, no link followed, and an
original only while it is still the file that was indexed.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Annotated, BinaryIO, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from mmrag.api.deps import ScopeDep, ServiceDep
from mmrag.api.errors import ApiError, documented
from mmrag.api.files import FileRefused, chunks, open_indexed, open_within
from mmrag.api.schemas import ItemOut
from mmrag.api.security import KeyScope
from mmrag.api.service import Service
from mmrag.blobs import BlobError, BlobNotFound, FolderBlobStore, is_s3_url, key_of_location, read_s3_object
from mmrag.ingest.images import thumbnail_format
from mmrag.ingest.mupdf import pymupdf
from mmrag.store.items import item_with_document
from mmrag.store.models import Document, Item

router = APIRouter(tags=["items"])

ItemId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="The item's id (from a query hit)")]
_PDF_CROP_DPI = 144
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def _load(service: Service, item_id: int, scope: KeyScope) -> tuple[Item, Document]:
    assert service.db is not None
    found = item_with_document(service.db, item_id)
    if found is None or not scope.allows(found[0].collection):
        raise ApiError(404, "not_found", f"no item {item_id}")
    return found


@router.get(
    "/items/{item_id}",
    response_model=ItemOut,
    summary="An item and its source",
    responses=documented(401, 404, 422, 503),
)
async def get_item(item_id: ItemId, service: ServiceDep, scope: ScopeDep) -> ItemOut:
    item, doc = await service.run(_load, service, item_id, scope)
    return ItemOut(
        item_id=item.id,
        collection=item.collection,
        document_id=doc.id,
        path=service.public_path(doc.path),
        modality=item.modality,
        page=item.page,
        bbox=item.bbox,
        text=item.text,
        metadata=item.meta or {},
        document_metadata=doc.meta or {},
        image_url=f"/v1/items/{item.id}/image" if item.modality != "text" else None,
    )


@router.get(
    "/items/{item_id}/image",
    summary="An item's picture: its thumbnail, or the original (the image file, or its region of a PDF page)",
    response_class=Response,
    responses={
        200: {
            "description": "The picture",
            "content": {
                f"image/{kind}": {"schema": {"type": "string", "format": "binary"}}
                for kind in ("webp", "jpeg", "png", "gif", "bmp", "tiff")
            },
        },
        **documented(401, 404, 409, 422, 503),
    },
)
async def get_item_image(
    item_id: ItemId,
    service: ServiceDep,
    scope: ScopeDep,
    variant: Annotated[
        Literal["thumbnail", "original"], Query(description="thumbnail (small) or original")
    ] = "thumbnail",
) -> Response:
    return await service.run(_picture, service, item_id, variant, scope)


def _picture(service: Service, item_id: int, variant: str, scope: KeyScope) -> Response:
    item, doc = _load(service, item_id, scope)
    if item.modality == "text":
        raise ApiError(404, "not_found", f"item {item_id} is a text chunk: it has no picture")
    if variant == "thumbnail":
        if not item.thumbnail:
            raise ApiError(404, "not_found", f"item {item_id} has no thumbnail")
        try:
            return Response(_thumbnail(service, item.thumbnail), media_type=f"image/{thumbnail_format()}")
        except FileRefused as refused:
            raise ApiError(404, "not_found", f"the thumbnail of item {item_id} {refused.reason}") from None
    if doc.kind not in ("image", "pdf") or (doc.kind == "pdf" and not item.page):
        raise ApiError(404, "not_found", f"item {item_id} has no original picture")
    source = _original(service, item_id, doc)
    if doc.kind == "image":
        head = source.read(16)
        source.seek(0)
        media = next((mime for magic, mime in _IMAGE_MAGIC if head.startswith(magic)), None)
        if media is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            media = "image/webp"
        in_memory = isinstance(source, io.BytesIO)
        size = len(source.getbuffer()) if in_memory else os.fstat(source.fileno()).st_size
        return StreamingResponse(
            chunks(source),
            media_type=media or "application/octet-stream",
            headers={"Content-Length": str(size)},
        )
    with source:
        assert item.page is not None  # a PDF item without a page was refused above
        return Response(_pdf_region(source, item.page, item.bbox), media_type="image/png")


def _thumbnail(service: Service, key: str) -> bytes:
    """From the blob store every replica shares: any replica serves any item's thumbnail. In a folder,
    read through open_within (no link followed)."""
    blobs = service.blobs
    if isinstance(blobs, FolderBlobStore):
        root = blobs.root.resolve()
        with open_within(root / key, [root]) as thumbnail:
            return thumbnail.read()
    try:
        return blobs.get(key)
    except (BlobError, ValueError) as exc:
        raise FileRefused(404, "is missing" if isinstance(exc, BlobNotFound) else str(exc)) from None


def _original(service: Service, item_id: int, doc: Document) -> BinaryIO:
    """The document's file, still the one indexed: a local file (open_indexed), or an S3 object (an s3://
    input, an upload in an S3 blob store) whose bytes hash to the indexed content."""
    try:
        if not is_s3_url(doc.path):
            return open_indexed(doc, service.file_roots)
        try:
            key = key_of_location(service.blobs, doc.path)
            data = service.blobs.get(key) if key is not None else read_s3_object(doc.path, service.settings)
        except BlobError:
            raise FileRefused(404, "is gone") from None
        if hashlib.sha256(data).hexdigest() != doc.content_hash:
            raise FileRefused(409, "has changed since it was indexed: index it again to serve it")
        return io.BytesIO(data)
    except FileRefused as refused:
        code = "conflict" if refused.status == 409 else "not_found"
        message = f"the source file of item {item_id} ({service.public_path(doc.path)}) {refused.reason}"
        raise ApiError(refused.status, code, message) from None


def _open_checked_pdf(source: BinaryIO) -> pymupdf.Document:
    """MuPDF on the file already opened and checked (open_indexed), through /proc/self/fd where there is
    one: the path is never opened again, so a file swapped for a link since the check is never read."""
    if isinstance(source, io.BytesIO):  # an S3 object, already in memory
        return pymupdf.open(stream=source.getvalue(), filetype="pdf")
    proc_path = f"/proc/self/fd/{source.fileno()}"
    if os.path.exists(proc_path):
        return pymupdf.open(proc_path, filetype="pdf")
    return pymupdf.open(stream=source.read(), filetype="pdf")


def _pdf_region(source: BinaryIO, page_number: int, bbox: list[float] | None) -> bytes:
    """The item's region of its page (the whole page for a rendered page), rendered as PNG."""
    try:
        with _open_checked_pdf(source) as doc:
            page = doc[page_number - 1]
            clip = pymupdf.Rect(bbox) & page.rect if bbox else page.rect
            if clip.is_empty:
                clip = page.rect
            return page.get_pixmap(dpi=_PDF_CROP_DPI, clip=clip).tobytes("png")
    except Exception as exc:
        raise ApiError(404, "not_found", f"the PDF page of this item cannot be rendered: {exc}") from None


_PAGE_HEADERS = {
    "X-Page-Width": {
        "description": "The page's width in PDF points, as rendered (rotation applied)",
        "schema": {"type": "number"},
    },
    "X-Page-Height": {
        "description": "The page's height in PDF points, as rendered",
        "schema": {"type": "number"},
    },
    "X-Item-Box": {
        "description": "The item's bounding box on the rendered page, 'x0,y0,x1,y1' in points from its top "
        "left corner (scale by the image's size / X-Page-Width); absent when the item has none",
        "schema": {"type": "string"},
    },
}
_MAX_PAGE_PIXELS = 16_000_000  # a poster-sized page is rendered at a lower resolution instead


@router.get(
    "/items/{item_id}/page",
    summary="The whole PDF page an item is on, as PNG, with where the item sits on it",
    description="For items of PDFs (text chunks, embedded images, rendered pages). The headers give the "
    "page size and the item's box in points, so a client can draw the box over the picture.",
    response_class=Response,
    responses={
        200: {
            "description": "The rendered page",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "headers": _PAGE_HEADERS,
        },
        **documented(401, 404, 409, 422, 503),
    },
)
async def get_item_page(
    item_id: ItemId,
    service: ServiceDep,
    scope: ScopeDep,
    dpi: Annotated[int, Query(ge=36, le=300, description="Resolution of the rendering")] = 110,
) -> Response:
    return await service.run(_page, service, item_id, dpi, scope)


def _page(service: Service, item_id: int, dpi: int, scope: KeyScope) -> Response:
    item, doc = _load(service, item_id, scope)
    if doc.kind != "pdf" or not item.page:
        raise ApiError(404, "not_found", f"item {item_id} is not on a PDF page")
    source = _original(service, item_id, doc)
    try:
        with source, _open_checked_pdf(source) as pdf:
            page = pdf[item.page - 1]
            rect = page.rect
            zoom = min(dpi / 72, (_MAX_PAGE_PIXELS / max(rect.width * rect.height, 1.0)) ** 0.5)
            png = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom)).tobytes("png")
            # Extracted boxes are in the unrotated page's coordinates; the picture is the rotated page.
            box = pymupdf.Rect(item.bbox) * page.rotation_matrix if item.bbox else None
    except Exception as exc:
        raise ApiError(
            404, "not_found", f"page {item.page} of this item's PDF cannot be rendered: {exc}"
        ) from None
    headers = {"X-Page-Width": f"{rect.width:g}", "X-Page-Height": f"{rect.height:g}"}
    if box is not None:
        headers["X-Item-Box"] = ",".join(f"{v:.2f}" for v in (box.x0, box.y0, box.x1, box.y1))
    return Response(png, media_type="image/png", headers=headers)
