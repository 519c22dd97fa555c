from __future__ import annotations

import contextlib
import gc
import inspect
import io
import itertools
import logging
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import ExtractionError
from mmrag.ingest.items import ExtractedItem, Modality, sha256_text
from mmrag.ingest.mupdf import pymupdf
from mmrag.ingest.pdf import extract_pdf, pdf_page_count
from mmrag.settings import IngestSettings
from tests.realdata import (
    PAGE_SIZE,
    PHOTO_DESCRIPTIONS,
    TEXT_RECT,
    photo_image,
    photo_rect,
    write_pdf_with_photos,
)

SETTINGS = IngestSettings(chunk_words=24, chunk_overlap_words=4)
PAGES = [["astronaut", "chelsea"], ["astronaut"], ["coffee", "astronaut"]]
TEXTS = [
    PHOTO_DESCRIPTIONS["astronaut"],
    PHOTO_DESCRIPTIONS["chelsea"],
    PHOTO_DESCRIPTIONS["coffee"],
]
TOLERANCE = 1.0  # points


@pytest.fixture
def photo_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "photos.pdf"
    write_pdf_with_photos(path, PAGES, text=TEXTS)
    return path


def _of(items: list[ExtractedItem], modality: Modality) -> list[ExtractedItem]:
    return [item for item in items if item.modality is modality]


def _which_photo(image: Image.Image, candidates: list[str]) -> str:
    """The candidate photo these pixels are (same size, small JPEG error)."""
    matches = []
    for name in candidates:
        original = photo_image(name).convert("RGB")
        if original.size != image.size:
            continue
        diff = np.abs(np.asarray(original, np.int16) - np.asarray(image, np.int16)).mean()
        if diff < 6:
            matches.append(name)
    assert len(matches) == 1, matches
    return matches[0]


def _assert_close(box: tuple[float, ...], expected: tuple[float, ...]) -> None:
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(box, expected, strict=True)), (box, expected)


def test_text_chunks_carry_their_page_and_a_bbox_inside_it(photo_pdf: Path) -> None:
    chunks = _of(list(extract_pdf(photo_pdf, SETTINGS)), Modality.TEXT)

    assert {chunk.page for chunk in chunks} == {1, 2, 3}
    page_width, page_height = PAGE_SIZE
    for chunk in chunks:
        assert chunk.text and chunk.content_hash == sha256_text(chunk.text)
        x0, y0, x1, y1 = chunk.bbox or (0, 0, 0, 0)
        assert 0 <= x0 < x1 <= page_width and 0 <= y0 < y1 <= page_height
        # The text was written into TEXT_RECT, so its bbox lies there (glyph boxes may poke out a little).
        tx0, ty0, tx1, ty1 = TEXT_RECT
        assert x0 >= tx0 - 2 and y0 >= ty0 - 2 and x1 <= tx1 + 2 and y1 <= ty1 + 2

    for page, description in enumerate(TEXTS, start=1):
        page_chunks = [chunk for chunk in chunks if chunk.page == page]
        assert [chunk.meta["chunk"] for chunk in page_chunks] == list(range(len(page_chunks)))
        words = " ".join(chunk.text or "" for chunk in page_chunks).split()
        assert set(description.split()) <= set(words)
    # Chunks never cross pages: the cat's description is on page 2 only.
    assert all("Chelsea" not in (chunk.text or "") for chunk in chunks if chunk.page != 2)


def test_long_page_text_is_split_with_overlap_and_tighter_bboxes(tmp_path: Path) -> None:
    path = tmp_path / "long.pdf"
    long_text = "\n".join(PHOTO_DESCRIPTIONS[name] for name in ("astronaut", "coins", "clock", "rocket"))
    write_pdf_with_photos(path, [[]], text=[long_text])
    chunks = _of(list(extract_pdf(path, SETTINGS)), Modality.TEXT)

    assert len(chunks) >= 4
    for previous, current in itertools.pairwise(chunks):
        assert (previous.text or "").split()[-4:] == (current.text or "").split()[:4]
    # The first chunk comes from the top lines, the last from the bottom ones.
    assert chunks[0].bbox and chunks[-1].bbox
    assert chunks[0].bbox[1] < chunks[-1].bbox[1]
    assert chunks[0].bbox[3] < chunks[-1].bbox[3]


def test_embedded_photos_are_found_on_their_pages_and_rects(photo_pdf: Path) -> None:
    images = _of(list(extract_pdf(photo_pdf, SETTINGS)), Modality.IMAGE)
    by_name = {_which_photo(item.image, ["astronaut", "chelsea", "coffee"]): item for item in images}  # type: ignore[arg-type]

    assert sorted(by_name) == ["astronaut", "chelsea", "coffee"]
    assert len(images) == 3, "the astronaut on three pages must be yielded once"

    astronaut = by_name["astronaut"]
    assert astronaut.page == 1 and astronaut.meta["also_on_pages"] == [2, 3]
    _assert_close(astronaut.bbox or (), photo_rect(0))

    assert by_name["chelsea"].page == 1 and "also_on_pages" not in by_name["chelsea"].meta
    _assert_close(by_name["chelsea"].bbox or (), photo_rect(1))
    assert by_name["coffee"].page == 3
    _assert_close(by_name["coffee"].bbox or (), photo_rect(0))

    for item in images:
        assert item.image is not None and item.image.mode == "RGB"
        assert (item.meta["width"], item.meta["height"]) == item.image.size
    assert len({item.content_hash for item in images}) == 3


def test_same_photo_stored_twice_is_yielded_once(tmp_path: Path) -> None:
    # Two separately written PDFs merged: the astronaut is stored under two xrefs with identical bytes.
    first, second = tmp_path / "a.pdf", tmp_path / "b.pdf"
    write_pdf_with_photos(first, [["astronaut"]])
    write_pdf_with_photos(second, [["chelsea", "astronaut"]])
    merged_path = tmp_path / "merged.pdf"
    with pymupdf.open(first) as merged, pymupdf.open(second) as other:
        merged.insert_pdf(other)
        merged.save(merged_path)
    with pymupdf.open(merged_path) as check:
        xrefs = {image[0] for page in check for image in page.get_images()}
        assert len(xrefs) == 3, "precondition: the astronaut is stored twice"

    images = _of(list(extract_pdf(merged_path, SETTINGS)), Modality.IMAGE)
    names = [_which_photo(item.image, ["astronaut", "chelsea"]) for item in images]  # type: ignore[arg-type]
    assert sorted(names) == ["astronaut", "chelsea"]
    astronaut = images[names.index("astronaut")]
    assert astronaut.page == 1 and astronaut.meta["also_on_pages"] == [2]


def test_icons_below_the_minimum_side_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "icon.pdf"
    write_pdf_with_photos(path, [["coins"]])
    icon = photo_image("chelsea").crop((200, 100, 224, 124))  # a 24x24 piece of the cat
    buffer = io.BytesIO()
    icon.save(buffer, "PNG")
    with pymupdf.open(path) as doc:
        doc[0].insert_image(pymupdf.Rect(500, 40, 524, 64), stream=buffer.getvalue())
        doc.save(tmp_path / "with_icon.pdf")

    default = _of(list(extract_pdf(tmp_path / "with_icon.pdf", SETTINGS)), Modality.IMAGE)
    assert [item.image.size for item in default] == [(384, 303)]  # type: ignore[union-attr]

    permissive = IngestSettings(min_pdf_image_side=16)
    sizes = {
        item.image.size
        for item in _of(list(extract_pdf(tmp_path / "with_icon.pdf", permissive)), Modality.IMAGE)
    }  # type: ignore[union-attr]
    assert sizes == {(384, 303), (24, 24)}


def test_cmyk_and_transparent_embedded_images_become_rgb(tmp_path: Path) -> None:
    path = tmp_path / "colours.pdf"
    cat = photo_image("chelsea")
    coffee = np.asarray(photo_image("coffee"))
    alpha = np.full(coffee.shape[:2], 255, dtype=np.uint8)
    alpha[:, :300] = 0
    doc = pymupdf.open()
    page = doc.new_page()
    cmyk = io.BytesIO()
    cat.convert("CMYK").save(cmyk, "JPEG", quality=95)
    page.insert_image(pymupdf.Rect(50, 50, 275, 200), stream=cmyk.getvalue())
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([coffee, alpha])).save(rgba, "PNG")
    page.insert_image(pymupdf.Rect(50, 300, 350, 500), stream=rgba.getvalue())
    doc.save(path)
    doc.close()

    images = {item.image.size: item.image for item in _of(list(extract_pdf(path, SETTINGS)), Modality.IMAGE)}  # type: ignore[union-attr]
    # MuPDF converts CMYK through an ICC profile and Pillow with plain arithmetic, so colours differ a little;
    # the picture must still be the cat, the right way round (not inverted, not channel-swapped).
    cat_back = np.asarray(images[cat.size], np.float64)
    cat_array = np.asarray(cat, np.float64)
    assert np.abs(cat_back - cat_array).mean() < 25
    for channel in range(3):
        assert np.corrcoef(cat_back[..., channel].ravel(), cat_array[..., channel].ravel())[0, 1] > 0.95
    coffee_back = np.asarray(images[(600, 400)], np.int16)
    assert (coffee_back[:, :300] == 255).all()
    assert np.abs(coffee_back[:, 300:] - coffee[:, 300:]).mean() < 1


def test_an_image_that_cannot_be_decoded_is_skipped_with_a_warning(
    photo_pdf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.pdf"
    with pymupdf.open(photo_pdf) as doc:
        chelsea_xref = next(
            info["xref"] for info in doc[0].get_image_info(xrefs=True) if info["width"] == 451
        )
        doc.update_stream(chelsea_xref, b"this is not a JPEG stream", compress=False)
        doc.xref_set_key(chelsea_xref, "Filter", "/DCTDecode")
        doc.save(broken)

    with caplog.at_level(logging.WARNING, logger="mmrag.ingest.pdf"):
        items = list(extract_pdf(broken, SETTINGS))
    images = _of(items, Modality.IMAGE)
    assert sorted(_which_photo(item.image, ["astronaut", "coffee"]) for item in images) == [
        "astronaut",
        "coffee",
    ]  # type: ignore[arg-type]
    assert any("cannot be decoded" in record.getMessage() for record in caplog.records)
    assert _of(items, Modality.TEXT), "text extraction must not suffer from one bad image"


def test_render_pages_yields_one_rendered_page_each(photo_pdf: Path) -> None:
    settings = IngestSettings(render_pages=True, render_dpi=72)
    items = list(extract_pdf(photo_pdf, settings))
    pages = _of(items, Modality.PAGE)

    assert [item.page for item in pages] == [1, 2, 3]
    for item, description in zip(pages, TEXTS, strict=True):
        assert item.image is not None and item.image.mode == "RGB"
        assert item.image.size == (595, 842)  # A4 in points at 72 dpi
        assert item.bbox == (0.0, 0.0, *PAGE_SIZE)
        assert description.split()[0] in (item.text or "")
    assert len({item.content_hash for item in pages}) == 3
    # The rendered page shows the astronaut where it was placed (top-left photo slot).
    x0, y0, x1, y1 = (int(v) for v in photo_rect(0))
    region = pages[1].image.crop((x0 + 2, y0 + 2, x1 - 2, y1 - 2))  # type: ignore[union-attr]
    expected = photo_image("astronaut").resize(region.size, Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(region, np.int16) - np.asarray(expected, np.int16)).mean() < 20

    assert not _of(list(extract_pdf(photo_pdf, SETTINGS)), Modality.PAGE)


def test_extraction_is_lazy_and_drops_rendered_pages(photo_pdf: Path) -> None:
    settings = IngestSettings(render_pages=True, render_dpi=36)
    items = extract_pdf(photo_pdf, settings)
    assert inspect.isgenerator(items)
    rendered: list[weakref.ref[Image.Image]] = []
    for item in items:
        if item.modality is Modality.PAGE and item.image is not None:
            rendered.append(weakref.ref(item.image))
        del item
        gc.collect()
        if len(rendered) >= 2:
            break
    assert rendered[0]() is None, "the extractor kept an earlier rendered page alive"
    items.close()


def test_encrypted_pdf_is_a_clear_error(photo_pdf: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pdf"
    with pymupdf.open(photo_pdf) as doc:
        doc.save(locked, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="collins", owner_pw="sts63")
    with pytest.raises(ExtractionError, match=r"encrypted.*password"):
        list(extract_pdf(locked, SETTINGS))
    with pytest.raises(ExtractionError, match="encrypted"):
        pdf_page_count(locked)


def test_truncated_pdf_is_repaired_or_a_clear_error(photo_pdf: Path, tmp_path: Path) -> None:
    data = photo_pdf.read_bytes()
    for fraction in (0.5, 0.2, 0.9):
        cut = tmp_path / f"cut_{fraction}.pdf"
        cut.write_bytes(data[: int(len(data) * fraction)])
        try:
            items = list(extract_pdf(cut, SETTINGS))
        except ExtractionError as exc:
            assert "PDF" in str(exc)
        else:
            assert all(item.page is None or 1 <= item.page <= 3 for item in items)
        with contextlib.suppress(ExtractionError):
            assert pdf_page_count(cut) >= 1


def test_not_a_pdf_no_pages_and_too_many_pages(photo_pdf: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.7\n" + PHOTO_DESCRIPTIONS["moon"].encode())
    with pytest.raises(ExtractionError, match=r"junk\.pdf"):
        list(extract_pdf(junk, SETTINGS))

    empty = tmp_path / "empty.pdf"
    empty.write_bytes(
        b"%PDF-1.4\n1 0 obj <</Type/Catalog/Pages 2 0 R>> endobj\n"
        b"2 0 obj <</Type/Pages/Kids[]/Count 0>> endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
    )
    with pytest.raises(ExtractionError, match="no pages"):
        list(extract_pdf(empty, SETTINGS))

    assert pdf_page_count(photo_pdf) == 3
    with pytest.raises(ExtractionError, match="3 pages, more than the limit of 2"):
        list(extract_pdf(photo_pdf, IngestSettings(max_pdf_pages=2)))

    with pytest.raises(ExtractionError, match="not found"):
        list(extract_pdf(tmp_path / "missing.pdf", SETTINGS))


def test_write_pdf_with_photos_reports_pages(tmp_path: Path) -> None:
    appears_on = write_pdf_with_photos(tmp_path / "p.pdf", [["moon", "clock"], [], ["clock"]])
    assert appears_on == {"moon": [1], "clock": [1, 3]}
    assert pdf_page_count(tmp_path / "p.pdf") == 3
