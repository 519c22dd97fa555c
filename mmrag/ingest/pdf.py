"""PDF files -> text chunks with page and bbox, embedded photos, and (optionally) rendered pages.

Order of what extract_pdf yields: for each page in order, its text chunks and then, with render_pages, the
rendered page; after the last page, the embedded images, each once. Images come last because an image used
on many pages (a logo, a figure repeated in a handout) is yielded once with every page it appears on, and
that is only known after all pages are read. Only image references (xref, page, bbox) are kept during the
page pass; pixels are decoded one image at a time at the end, and rendered pages are yielded as they are
made, so a 300-page PDF never holds more than one page's pixels.

Text blocks are taken in MuPDF's order, which follows the content stream: the order the producer wrote, which
is reading order for the PDFs of word processors and LaTeX. (Sorting blocks by position would interleave
the lines of two-column layouts.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmrag.errors import ExtractionError, MmragError
from mmrag.ingest.images import WHITE
from mmrag.ingest.items import BBox, ExtractedItem, Modality, sha256_bytes, sha256_text
from mmrag.ingest.listpages import LIST_PAGE_KEY, PAGE_LABEL_KEY, page_layout
from mmrag.ingest.mupdf import pymupdf
from mmrag.ingest.text import Chunking, default_chunkings, word_windows
from mmrag.settings import IngestSettings

logger = logging.getLogger(__name__)

_TEXT_BLOCK = 0
_MAX_QUOTED_WARNINGS = 3
# MuPDF warnings during an image decode that mean the pixels are not the picture (it pads with black).
_DAMAGE_WORDS = ("error", "truncated", "premature", "corrupt")


@dataclass
class _ImageUse:
    """Where one embedded image appears: the first (page, bbox) it is yielded with, then the other pages."""

    xref: int
    width: int
    height: int
    page: int
    bbox: BBox
    other_pages: list[int] = field(default_factory=list)


def pdf_page_count(path: Path) -> int:
    """Number of pages, after the same checks as extract_pdf (readable, not encrypted, not empty)."""
    with _open_pdf(path, max_pages=None) as doc:
        return doc.page_count


def extract_pdf(
    path: Path, settings: IngestSettings, chunkings: Sequence[Chunking] | None = None
) -> Iterator[ExtractedItem]:
    """Text chunks, rendered pages (settings.render_pages) and embedded images of a PDF, lazily. Text is cut
    into chunks once per entry of `chunkings` (default: settings.chunk_words for every space).

    Raises ExtractionError when the PDF cannot be opened, is encrypted, has no pages or too many, or when
    not one page can be read; a single damaged page or image is skipped with a logged warning.
    """
    chunkings = list(chunkings or default_chunkings(settings))
    with _open_pdf(path, max_pages=settings.max_pdf_pages) as doc:
        uses: dict[int, _ImageUse] = {}
        failed_pages: list[str] = []
        yielded = 0
        for page_index in range(doc.page_count):
            page_number = page_index + 1
            try:
                page_items = _page_items(doc, page_index, settings, chunkings, uses)
            except MmragError:
                raise
            except Exception as exc:
                # A repaired PDF often has a few pages whose objects were cut off; keep the rest.
                logger.warning("%s: skipping page %d: %s", path, page_number, exc)
                failed_pages.append(f"page {page_number}: {exc}")
                continue
            yielded += len(page_items)
            yield from page_items
            del page_items  # one page's rendering at a time, even while the consumer holds the generator
        for item in _image_items(doc, path, uses, settings):
            yielded += 1
            yield item
        if failed_pages and not yielded:
            raise ExtractionError(
                f"damaged PDF {path.name}: no page could be read ({'; '.join(failed_pages[:3])})"
                + _mupdf_warnings_suffix()
            )


@contextmanager
def _open_pdf(path: Path, max_pages: int | None) -> Iterator[pymupdf.Document]:
    if not path.is_file():
        raise ExtractionError(f"PDF not found: {path}")
    pymupdf.TOOLS.reset_mupdf_warnings()
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except Exception as exc:
        raise ExtractionError(f"cannot open PDF {path.name}: {exc}{_mupdf_warnings_suffix()}") from exc
    try:
        if doc.needs_pass:
            raise ExtractionError(f"encrypted PDF {path.name}: it needs a password to open")
        try:
            page_count = doc.page_count
        except Exception as exc:
            raise ExtractionError(f"damaged PDF {path.name}: {exc}{_mupdf_warnings_suffix()}") from exc
        if page_count == 0:
            raise ExtractionError(f"PDF {path.name} has no pages{_mupdf_warnings_suffix()}")
        if max_pages is not None and page_count > max_pages:
            raise ExtractionError(
                f"PDF {path.name} has {page_count} pages, more than the limit of {max_pages} "
                "(ingest.max_pdf_pages)"
            )
        if doc.is_repaired:
            logger.warning("%s: damaged PDF repaired by MuPDF%s", path, _mupdf_warnings_suffix())
        yield doc
    finally:
        doc.close()


def _mupdf_warnings_suffix() -> str:
    lines = [line for line in pymupdf.TOOLS.mupdf_warnings().splitlines() if line.strip()]
    if not lines:
        return ""
    return " (MuPDF: " + "; ".join(lines[:_MAX_QUOTED_WARNINGS]) + ")"


def _page_items(
    doc: pymupdf.Document,
    page_index: int,
    settings: IngestSettings,
    chunkings: Sequence[Chunking],
    uses: dict[int, _ImageUse],
) -> list[ExtractedItem]:
    """All items of one page (its text chunks and rendered image); records its images in `uses`."""
    page = doc.load_page(page_index)
    page_number = page_index + 1
    items = [item for chunking in chunkings for item in _text_chunks(page, page_number, chunking)]
    try:
        _record_images(page, page_number, settings, uses)
    except Exception as exc:  # the page's text is kept whatever its images do
        logger.warning("page %d: skipping its images: %s", page_number, exc)
    if settings.render_pages:
        items.append(_render_page(page, page_number, settings))
    _mark_layout(page, doc.page_count, items)
    return items


def _mark_layout(page: pymupdf.Page, page_count: int, items: list[ExtractedItem]) -> None:
    """Note the page's printed number on its items, and on a table of contents or index page the page
    numbers it lists (mmrag.ingest.listpages)."""
    try:
        layout = page_layout(page, page_count)
    except Exception as exc:  # an odd page layout costs the page its mark, never its text
        logger.warning("page %d: cannot read its layout: %s", page.number + 1, exc)
        return
    for item in items:
        if layout.label is not None:
            item.meta[PAGE_LABEL_KEY] = layout.label
        if layout.points_to is not None:
            item.meta[LIST_PAGE_KEY] = list(layout.points_to)


def _text_chunks(page: pymupdf.Page, page_number: int, chunking: Chunking) -> list[ExtractedItem]:
    words: list[str] = []
    word_blocks: list[int] = []  # index into block_boxes of the block each word came from
    block_boxes: list[BBox] = []
    for block in page.get_text("blocks"):
        x0, y0, x1, y1, text, _, block_type = block[:7]
        block_words = text.split() if block_type == _TEXT_BLOCK else []
        if not block_words:
            continue
        word_blocks.extend([len(block_boxes)] * len(block_words))
        block_boxes.append((x0, y0, x1, y1))
        words.extend(block_words)
    items: list[ExtractedItem] = []
    page_rect = page.rect
    for index, window in enumerate(word_windows(len(words), chunking.words, chunking.overlap)):
        chunk = " ".join(words[window.start : window.stop])
        touched = {word_blocks[i] for i in window}
        items.append(
            ExtractedItem(
                modality=Modality.TEXT,
                content_hash=sha256_text(chunk),
                page=page_number,
                bbox=_clip(_union(block_boxes[b] for b in touched), page_rect),
                text=chunk,
                meta=chunking.meta({"chunk": index}),
            )
        )
    return items


def _union(boxes: Iterator[BBox] | list[BBox]) -> BBox:
    x0s, y0s, x1s, y1s = zip(*boxes, strict=True)
    return (min(x0s), min(y0s), max(x1s), max(y1s))


def _clip(box: BBox, rect: pymupdf.Rect) -> BBox:
    return (
        max(box[0], rect.x0),
        max(box[1], rect.y0),
        min(box[2], rect.x1),
        min(box[3], rect.y1),
    )


def _record_images(
    page: pymupdf.Page, page_number: int, settings: IngestSettings, uses: dict[int, _ImageUse]
) -> None:
    """Note where the page's images are, from the page's resources and content stream: nothing is decoded
    here (an image MuPDF refuses to decode, "Overly large image", must not cost the page its text)."""
    for entry in page.get_images(full=True):
        xref, width, height = int(entry[0]), int(entry[2]), int(entry[3])
        if xref <= 0 or min(width, height) < settings.min_pdf_image_side:
            continue  # icons, bullets, rules
        use = uses.get(xref)
        if use is not None:
            if page_number != use.page and page_number not in use.other_pages:
                use.other_pages.append(page_number)
            continue
        try:
            # get_image_bbox answers on the page as shown; items keep unrotated page coordinates
            rect = page.get_image_bbox(entry) * page.derotation_matrix
        except Exception as exc:  # a broken content stream or resource: the image is skipped, not the page
            logger.warning("page %d: cannot place image xref %d: %s", page_number, xref, exc)
            continue
        if rect.is_empty or rect.is_infinite:
            continue  # listed in the page's resources but never drawn
        bbox = _clip((rect.x0, rect.y0, rect.x1, rect.y1), page.rect)
        uses[xref] = _ImageUse(xref=xref, width=width, height=height, page=page_number, bbox=bbox)


def _image_items(
    doc: pymupdf.Document, path: Path, uses: dict[int, _ImageUse], settings: IngestSettings
) -> Iterator[ExtractedItem]:
    """One item per distinct image: distinct by xref, and by bytes (one photo stored twice is one photo)."""
    by_digest: dict[str, _ImageUse] = {}
    for use in uses.values():
        if use.width * use.height > settings.max_image_pixels:
            logger.warning(
                "%s: skipping image on page %d: %dx%d pixels exceeds the limit of %d",
                path, use.page, use.width, use.height, settings.max_image_pixels,
            )  # fmt: skip
            continue
        try:
            digest = _image_digest(doc, use.xref)
        except Exception as exc:
            logger.warning("%s: skipping image xref %d on page %d: %s", path, use.xref, use.page, exc)
            continue
        first = by_digest.get(digest)
        if first is None:
            by_digest[digest] = use
            continue
        for page_number in [use.page, *use.other_pages]:
            if page_number != first.page and page_number not in first.other_pages:
                first.other_pages.append(page_number)
    # Empty MuPDF's cache so each decode below happens now and its damage warnings can be seen.
    pymupdf.TOOLS.store_shrink(100)
    for digest, use in by_digest.items():
        try:
            image = _image_pixels(doc, use.xref)
        except Exception as exc:
            logger.warning("%s: skipping image on page %d that cannot be decoded: %s", path, use.page, exc)
            continue
        meta: dict[str, object] = {"xref": use.xref, "width": image.width, "height": image.height}
        if use.other_pages:
            meta["also_on_pages"] = sorted(use.other_pages)
        yield ExtractedItem(
            modality=Modality.IMAGE,
            content_hash=digest,
            page=use.page,
            bbox=use.bbox,
            image=image,
            meta=meta,
        )


def _image_digest(doc: pymupdf.Document, xref: int) -> str:
    """sha256 of the image's stored (still encoded) bytes, plus its soft mask's: cheap, no decoding."""
    raw = doc.xref_stream_raw(xref) or b""
    smask = _smask_xref(doc, xref)
    if smask:
        raw += doc.xref_stream_raw(smask) or b""
    return sha256_bytes(raw)


def _smask_xref(doc: pymupdf.Document, xref: int) -> int:
    kind, value = doc.xref_get_key(xref, "SMask")
    if kind != "xref":
        return 0
    return int(value.split()[0])


def _image_pixels(doc: pymupdf.Document, xref: int) -> Image.Image:
    """Decoded RGB pixels: MuPDF decodes every PDF filter (JPX, JBIG2, CCITT ...) and colour space.

    A broken stream does not raise in MuPDF: it warns and pads the picture with black. Those warnings are
    what tells a damaged image from a dark one, so they are checked around the decode.
    """
    pixmap = _decode_checked(doc, xref)
    smask = _smask_xref(doc, xref)
    if smask:
        pixmap = pymupdf.Pixmap(pixmap, _decode_checked(doc, smask))
    if pixmap.colorspace is None:
        raise ValueError("image is a bare mask without colour")
    if pixmap.colorspace.n not in (1, 3):  # CMYK, Lab, DeviceN ...
        pixmap = pymupdf.Pixmap(pymupdf.csRGB, pixmap)
    if pixmap.colorspace.n == 1:
        pixmap = pymupdf.Pixmap(pymupdf.csRGB, pixmap)
    size = (pixmap.width, pixmap.height)
    if pixmap.alpha:
        rgba = Image.frombytes("RGBA", size, pixmap.samples)
        background = Image.new("RGB", size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return Image.frombytes("RGB", size, pixmap.samples)


def _decode_checked(doc: pymupdf.Document, xref: int) -> pymupdf.Pixmap:
    pymupdf.TOOLS.reset_mupdf_warnings()
    pixmap = pymupdf.Pixmap(doc, xref)
    complaints = [
        line
        for line in pymupdf.TOOLS.mupdf_warnings().splitlines()
        if any(word in line.lower() for word in _DAMAGE_WORDS)
    ]
    if complaints:
        raise ValueError("; ".join(complaints[:_MAX_QUOTED_WARNINGS]))
    return pixmap


def _render_page(page: pymupdf.Page, page_number: int, settings: IngestSettings) -> ExtractedItem:
    dpi = _render_dpi(page.rect, settings)
    pixmap = page.get_pixmap(dpi=dpi, alpha=False, colorspace=pymupdf.csRGB)
    samples = pixmap.samples
    image = Image.frombytes("RGB", (pixmap.width, pixmap.height), samples)
    rect = page.rect
    return ExtractedItem(
        modality=Modality.PAGE,
        content_hash=sha256_bytes(samples),
        page=page_number,
        bbox=(rect.x0, rect.y0, rect.x1, rect.y1),
        text=page.get_text(),
        image=image,
        meta={"dpi": dpi, "width": pixmap.width, "height": pixmap.height},
    )


def _render_dpi(rect: pymupdf.Rect, settings: IngestSettings) -> int:
    """settings.render_dpi, lowered for huge pages (posters, maps) so the render stays under max pixels."""
    dpi = settings.render_dpi
    points = max(rect.width * rect.height, 1.0)
    while dpi > 1 and points * (dpi / 72.0) ** 2 > settings.max_image_pixels:
        dpi = max(1, int(dpi * 0.8))
    return dpi
