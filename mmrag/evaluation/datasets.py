"""Small labelled evaluation sets written from real data that ships inside Python packages (no download).

Three builders, each writing files plus a qrels file (format: `mmrag.evaluation.qrels`) into a folder:

- `build_photo_set`: 17 photos from scikit-image (`skimage.data`), scikit-learn (china.jpg, flower.jpg)
  and matplotlib (grace_hopper.jpg) as JPEGs; one Markdown file per photo holding its `skimage.data`
  docstring (text its authors wrote about it); a PDF showing several of the photos on known pages, each
  with a caption line taken from its docstring; and one or two queries per photo.
- `build_digits_set`: scikit-learn's handwritten digits as PNGs, one query per digit class.
- `build_lfw_set`: scikit-image's LFW subset (100 faces, then 100 non-faces), one query for faces.

Where the ground truth comes from: the query strings are typed by hand (short descriptions of what each
photo shows, such as "a cat" or "rocket on a launch pad"), but which files answer a query is never a
judgment made here. A photo query's relevant items are that photo's own file, the PDF pages it was
placed on, and the Markdown file of its own docstring, all identified by the data's own name
(`skimage.data.chelsea` is "Chelsea the cat." in its docstring). Digit and face queries take their
relevant images from the labels the datasets' authors assigned (`load_digits().target`; the LFW subset's
documented order: first 100 faces).

scikit-learn's description of its two sample images holds only licence and attribution text, and
matplotlib gives none for grace_hopper.jpg, so those three photos get no Markdown file and no PDF caption.

Relevance is judged per file or per PDF page: a page showing two photos is relevant to the queries of
both, including the other photo's caption and image on it.

scikit-image, scikit-learn and matplotlib are development dependencies (`pip install 'mmrag[dev]'`);
they are imported only when a builder runs.

A fourth builder needs no hand-typed query at all:

- `build_pdf_sections_set`: a PDF's own outline (bookmarks) maps each section title to the page where the
  section starts; the title is the query and that page is the answer. By default the PDF is Debian
  gnuplot-doc's 311-page manual (`apt-get install gnuplot-doc`), whose outline has 648 entries.
"""

from __future__ import annotations

import importlib
import inspect
import io
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from mmrag.errors import ConfigError, MmragError
from mmrag.evaluation.qrels import write_qrels

__all__ = [
    "BASHREF_PDF",
    "GNUPLOT_PDF",
    "PDF_PAGES",
    "PHOTO_NAMES",
    "PHOTO_QUERIES",
    "EvalSetError",
    "OutlineSection",
    "build_bash_sections_set",
    "build_digits_set",
    "build_lfw_set",
    "build_pdf_sections_set",
    "build_photo_set",
    "outline_sections",
]

PHOTO_QRELS = "qrels-photos.jsonl"
DIGITS_QRELS = "qrels-digits.jsonl"
LFW_QRELS = "qrels-lfw.jsonl"
SECTIONS_QRELS = "qrels-sections.jsonl"

# Debian's gnuplot-doc package installs the gnuplot 5.4 manual here: 311 pages, an outline of 648 entries.
GNUPLOT_PDF = Path("/usr/share/doc/gnuplot/gnuplot.pdf")
GNUPLOT_PACKAGE = "gnuplot-doc"
# Debian's bash-doc: the Bash 5.2 reference manual (texinfo), 196 pages, an outline of 141 entries, its
# printed page numbers 6 behind the PDF's (front matter), a 4-page contents and a 9-page index.
BASHREF_PDF = Path("/usr/share/doc/bash/bashref.pdf")
BASHREF_PACKAGE = "bash-doc"

# Photo name -> hand-typed queries; which files answer them follows from the name (module docstring).
PHOTO_QUERIES: dict[str, tuple[str, ...]] = {
    "astronaut": ("astronaut in a space suit", "woman astronaut with the american flag"),
    "chelsea": ("a cat", "close-up of a tabby cat's face"),
    "coffee": ("cup of coffee",),
    "rocket": ("rocket on a launch pad",),
    "camera": ("man with a camera on a tripod", "black and white photo of a photographer"),
    "coins": ("coins", "ancient coins"),
    "moon": ("the moon",),
    "clock": ("a clock", "blurry wall clock"),
    "brick": ("brick wall",),
    "grass": ("grass",),
    "gravel": ("gravel",),
    "hubble_deep_field": ("hubble deep field galaxies",),
    "retina": ("retina of an eye",),
    "stereo_motorcycle": ("motorcycle", "red motorcycle in a garage"),
    "china": ("a temple in china", "chinese pagoda by a lake"),
    "flower": ("a flower", "orange dahlia"),
    "grace_hopper": ("woman in naval uniform",),
}
PHOTO_NAMES: tuple[str, ...] = tuple(PHOTO_QUERIES)

# The PDF's pages (1-based by position) and the photos each shows; chelsea appears twice on purpose, so
# one query has two relevant pages. Only photos with a docstring, which supplies the caption.
PDF_PAGES: tuple[tuple[str, ...], ...] = (
    ("astronaut", "rocket"),
    ("chelsea", "coffee"),
    ("coins", "clock", "moon"),
    ("hubble_deep_field", "retina"),
    ("camera", "chelsea"),
)
PDF_NAME = "figures.pdf"

_SKLEARN_SAMPLES = {"china": "china.jpg", "flower": "flower.jpg"}
_MAX_SIDE = 1024  # retina is 1411 px square; nothing here needs more detail than this
_JPEG_QUALITY = 90

# PDF layout in points (A4): captions in a band at the top, photos in a two-column grid below it.
_PAGE_W, _PAGE_H = 595.0, 842.0
_CAPTION_RECT = (50.0, 40.0, 545.0, 260.0)
_GRID_TOP, _CELL_W, _CELL_H, _GAP, _LEFT = 280.0, 240.0, 170.0, 15.0, 50.0


@dataclass(frozen=True)
class _Photo:
    name: str
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8
    docstring: str | None  # the skimage.data function's docstring, cleaned of indentation
    source: str  # where it came from, for the Markdown title


def build_photo_set(folder: Path) -> Path:
    """Write photos/, docs/, pdfs/figures.pdf and qrels-photos.jsonl under `folder`; returns the qrels path.

    Relevant to each query: photos/<name>.jpg, docs/<name>.md when the photo has a docstring, and each
    page of pdfs/figures.pdf that shows the photo (PDF_PAGES).
    """
    folder = Path(folder)
    photos = [_load_photo(name) for name in PHOTO_NAMES]
    by_name = {photo.name: photo for photo in photos}
    jpeg_of: dict[str, bytes] = {}
    for photo in photos:
        jpeg_of[photo.name] = _jpeg_bytes(photo.pixels)
        _write_bytes(folder / "photos" / f"{photo.name}.jpg", jpeg_of[photo.name])
        if photo.docstring is not None:
            markdown = f"# {photo.source}\n\n{photo.docstring}\n"
            (folder / "docs").mkdir(parents=True, exist_ok=True)
            (folder / "docs" / f"{photo.name}.md").write_text(markdown, encoding="utf-8")
    pages_of = _write_figures_pdf(folder / "pdfs" / PDF_NAME, by_name, jpeg_of)

    records: list[dict[str, object]] = []
    for photo in photos:
        relevant: list[dict[str, object]] = [{"path": f"photos/{photo.name}.jpg"}]
        relevant += [{"path": f"pdfs/{PDF_NAME}", "page": page} for page in pages_of.get(photo.name, [])]
        if photo.docstring is not None:
            relevant.append({"path": f"docs/{photo.name}.md"})
        for number, text in enumerate(PHOTO_QUERIES[photo.name], start=1):
            records.append({"id": f"{photo.name}-{number}", "text": text, "relevant": relevant})
    return write_qrels(folder / PHOTO_QRELS, records)


def build_digits_set(folder: Path, n_per_class: int = 10) -> Path:
    """Write the first `n_per_class` images of each digit in scikit-learn's `load_digits()` as 64x64 PNGs
    under folder/digits/ (named by dataset index, so the file name does not give the label away), and
    qrels-digits.jsonl with the query "handwritten digit D" for each digit; returns the qrels path.

    The 8x8 images hold ink as 0..16; they are written as dark ink on white, as digits appear on paper.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    datasets = _optional_import("sklearn.datasets", "scikit-learn", "the digits set")
    digits = datasets.load_digits()
    out = Path(folder) / "digits"
    out.mkdir(parents=True, exist_ok=True)
    files_of_class: dict[int, list[str]] = {label: [] for label in range(10)}
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        if len(files_of_class[label]) >= n_per_class:
            continue
        ink = np.clip(pixels / 16.0, 0.0, 1.0)
        grey = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").resize((64, 64), Image.Resampling.BICUBIC)
        name = f"{index:04d}.png"
        image.save(out / name)
        files_of_class[label].append(f"digits/{name}")
        if all(len(files) >= n_per_class for files in files_of_class.values()):
            break
    records = [
        {
            "id": f"digit-{label}",
            "text": f"handwritten digit {label}",
            "relevant": [{"path": f} for f in files],
        }
        for label, files in files_of_class.items()
        if files
    ]
    return write_qrels(Path(folder) / DIGITS_QRELS, records)


def build_lfw_set(folder: Path, size: int = 100) -> Path:
    """Write scikit-image's `lfw_subset()` (200 grey 25x25 crops: the first 100 faces, the last 100
    background patches from the same photos) as PNGs under folder/lfw/, upscaled to `size` pixels so
    they are viewable, and qrels-lfw.jsonl with the query "a photo of a face" whose relevant images are
    the 100 faces; returns the qrels path."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    skimage_data = _optional_import("skimage.data", "scikit-image", "the LFW face set")
    images = np.asarray(skimage_data.lfw_subset())
    out = Path(folder) / "lfw"
    out.mkdir(parents=True, exist_ok=True)
    faces: list[str] = []
    for index, pixels in enumerate(images):
        grey = np.round(255.0 * np.clip(pixels, 0.0, 1.0)).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        name = f"{index:03d}.png"
        image.save(out / name)
        if index < 100:  # skimage documents the order: "100 first images are faces"
            faces.append(f"lfw/{name}")
    record = {"id": "face", "text": "a photo of a face", "relevant": [{"path": p} for p in faces]}
    return write_qrels(Path(folder) / LFW_QRELS, [record])


class EvalSetError(MmragError, ValueError):
    """An evaluation set that cannot be built from what it was given: a missing PDF, one with no outline."""


@dataclass(frozen=True)
class OutlineSection:
    """One entry of a PDF's outline: its title, the page it starts on and the pages wholly inside it."""

    index: int  # position in the outline, 0-based; stable, so it names the query
    level: int
    title: str  # whitespace collapsed
    page: int  # 1-based page the section starts on
    last_page: int  # the page before the next section starts (== page when that is on the same page)


def outline_sections(pdf: Path) -> list[OutlineSection]:
    """The outline (bookmarks) of `pdf` as sections in document order, entries that point nowhere dropped.

    A section runs from its page to the page before the next entry starts (a heading in the middle of a
    page leaves that page to the next section); the last one runs to the end of the document.
    """
    from mmrag.ingest.mupdf import pymupdf

    doc = _open_outlined_pdf(pdf)
    try:
        page_count = doc.page_count
        entries = [
            (index, int(level), " ".join(str(title).split()), int(page))
            for index, (level, title, page) in enumerate(doc.get_toc(simple=True))
        ]
    except (RuntimeError, ValueError, pymupdf.FileDataError) as exc:
        raise EvalSetError(f"cannot read the outline of {pdf}: {exc}") from None
    finally:
        doc.close()
    # Outline order is document order in the PDFs LaTeX and word processors write; the sort only guards
    # against an outline that jumps back, keeping entries of one page in outline order.
    placed = sorted((e for e in entries if 1 <= e[3] <= page_count and e[2]), key=lambda e: (e[3], e[0]))
    sections = []
    for position, (index, level, title, page) in enumerate(placed):
        next_page = placed[position + 1][3] if position + 1 < len(placed) else page_count + 1
        sections.append(OutlineSection(index, level, title, page, max(page, next_page - 1)))
    return sections


def build_pdf_sections_set(
    folder: Path,
    pdf: Path = GNUPLOT_PDF,
    n_queries: int | None = 100,
    seed: int = 0,
    pages: tuple[int, int] | None = None,
) -> Path:
    """Copy `pdf` to folder/pdfs/ and write qrels-sections.jsonl: one query per outline section, the
    section's title, whose relevant items are the page it starts on (grade 2) and the pages wholly inside
    it (grade 1). Returns the qrels path.

    Titles that occur more than once in the outline ("Examples" under many commands) say nothing about
    which page is meant and are left out. `n_queries` sections are drawn at random (`seed`) from the
    rest; None keeps them all. `pages=(first, last)` (1-based, inclusive) writes only those pages, with
    the outline entries that start on them, so a test can index a slice of a long manual.
    """
    if n_queries is not None and n_queries < 1:
        raise ValueError(f"n_queries must be at least 1 (or None for all), got {n_queries}")
    source = Path(pdf)
    if not source.is_file():
        package = {GNUPLOT_PDF: GNUPLOT_PACKAGE, BASHREF_PDF: BASHREF_PACKAGE}.get(source)
        if package is not None:
            raise EvalSetError(
                f"{source} not found: it comes with Debian's {package} package "
                f"(apt-get install {package}); or pass another PDF that has an outline"
            )
        raise EvalSetError(f"PDF not found: {source}")
    out_dir = Path(folder) / "pdfs"
    out_dir.mkdir(parents=True, exist_ok=True)
    if pages is None:
        copy = out_dir / source.name
        shutil.copyfile(source, copy)
    else:
        copy = out_dir / f"{source.stem}-pages-{pages[0]}-{pages[1]}.pdf"
        _write_page_range(source, copy, pages)

    # The ground truth is read from the copy that gets indexed, so it always describes that file.
    sections = outline_sections(copy)
    if not sections:
        raise EvalSetError(f"{copy}: its outline has no entry that points at a page")
    title_counts: dict[str, int] = {}
    for section in sections:
        title_counts[section.title.casefold()] = title_counts.get(section.title.casefold(), 0) + 1
    candidates = [s for s in sections if title_counts[s.title.casefold()] == 1]
    if not candidates:
        raise EvalSetError(f"{copy}: every outline title occurs more than once; no query would be specific")
    if n_queries is not None and n_queries < len(candidates):
        candidates = sorted(random.Random(seed).sample(candidates, n_queries), key=lambda s: s.index)

    relative = f"pdfs/{copy.name}"
    records = [
        {
            "id": f"section-{section.index:04d}",
            "text": section.title,
            "relevant": [
                {"path": relative, "page": section.page, "grade": 2},
                *({"path": relative, "page": p} for p in range(section.page + 1, section.last_page + 1)),
            ],
        }
        for section in candidates
    ]
    return write_qrels(Path(folder) / SECTIONS_QRELS, records)


def build_bash_sections_set(folder: Path, n_queries: int | None = 100, seed: int = 0) -> Path:
    """build_pdf_sections_set on Debian bash-doc's Bash reference manual: a second manual, whose printed
    page numbers differ from the PDF's."""
    return build_pdf_sections_set(folder, pdf=BASHREF_PDF, n_queries=n_queries, seed=seed)


def _open_outlined_pdf(pdf: Path):  # type: ignore[no-untyped-def]
    from mmrag.ingest.mupdf import pymupdf

    try:
        doc = pymupdf.open(pdf)
    except (RuntimeError, ValueError, pymupdf.FileDataError) as exc:
        raise EvalSetError(f"cannot open {pdf} as a PDF: {exc}") from None
    if not doc.is_pdf or doc.needs_pass:
        doc.close()
        raise EvalSetError(f"{pdf} is not a readable PDF (not a PDF, or encrypted)")
    if not doc.get_toc():
        doc.close()
        raise EvalSetError(f"{pdf} has no outline (bookmarks): there is no section -> page ground truth")
    return doc


def _write_page_range(source: Path, target: Path, pages: Sequence[int]) -> None:
    """Write pages first..last of `source` to `target`, keeping the outline entries that start on them."""
    from mmrag.ingest.mupdf import pymupdf

    first, last = pages
    doc = _open_outlined_pdf(source)
    try:
        if not 1 <= first <= last <= doc.page_count:
            raise EvalSetError(f"page range {first}-{last} is outside {source}'s pages 1-{doc.page_count}")
        outline = doc.get_toc()
        kept = [(level, title, page - first + 1) for level, title, page in outline if first <= page <= last]
        subset = pymupdf.open()
        try:
            subset.insert_pdf(doc, from_page=first - 1, to_page=last - 1, links=False, annots=False)
            # set_toc wants a tree: the first entry at level 1 and no level more than one below the last.
            toc, previous = [], 0
            for level, title, page in kept:
                previous = min(level, previous + 1)
                toc.append([previous, title, page])
            subset.set_toc(toc)
            subset.save(target, garbage=3, deflate=True)
        finally:
            subset.close()
    finally:
        doc.close()


def _load_photo(name: str) -> _Photo:
    if name in _SKLEARN_SAMPLES:
        datasets = _optional_import("sklearn.datasets", "scikit-learn", "the photo set")
        pixels = datasets.load_sample_image(_SKLEARN_SAMPLES[name])
        return _Photo(name, _shrink(pixels), None, f"scikit-learn sample image {_SKLEARN_SAMPLES[name]}")
    if name == "grace_hopper":
        cbook = _optional_import("matplotlib.cbook", "matplotlib", "the photo set")
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        return _Photo(name, _shrink(pixels), None, "matplotlib sample data grace_hopper.jpg")
    skimage_data = _optional_import("skimage.data", "scikit-image", "the photo set")
    loader: Callable[[], object] = getattr(skimage_data, name)
    loaded = loader()
    pixels = loaded[0] if isinstance(loaded, tuple) else loaded  # stereo_motorcycle: (left, right, disparity)
    docstring = inspect.cleandoc(loader.__doc__) if loader.__doc__ else None
    return _Photo(name, _shrink(np.asarray(pixels)), docstring, f"skimage.data.{name}")


def _shrink(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    if max(height, width) <= _MAX_SIDE:
        return pixels
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((_MAX_SIDE, _MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _caption_line(photo: _Photo) -> str:
    # The docstring's summary line: "Chelsea the cat.", "Launch photo of DSCOVR on Falcon 9 by SpaceX."
    if photo.docstring is None:
        return photo.source
    return photo.docstring.strip().splitlines()[0].strip()


def _write_figures_pdf(
    path: Path, photos: dict[str, _Photo], jpeg_of: dict[str, bytes]
) -> dict[str, list[int]]:
    """Write PDF_PAGES as a PDF; returns photo name -> the 1-based pages showing it."""
    from mmrag.ingest.mupdf import pymupdf

    pages_of: dict[str, list[int]] = {}
    doc = pymupdf.open()
    try:
        for page_number, names in enumerate(PDF_PAGES, start=1):
            page = doc.new_page(width=_PAGE_W, height=_PAGE_H)
            captions = [
                f"Figure {page_number}.{slot}: {_caption_line(photos[name])}"
                for slot, name in enumerate(names, start=1)
            ]
            spare = page.insert_textbox(
                pymupdf.Rect(_CAPTION_RECT), "\n".join(captions), fontsize=11, fontname="helv"
            )
            if spare < 0:  # insert_textbox writes nothing at all when the text does not fit
                raise ValueError(f"captions of PDF page {page_number} do not fit: {captions}")
            for slot, name in enumerate(names):
                page.insert_image(pymupdf.Rect(_photo_rect(slot)), stream=jpeg_of[name])
                pages_of.setdefault(name, []).append(page_number)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc.save(path, garbage=3, deflate=True)
    finally:
        doc.close()
    return pages_of


def _photo_rect(slot: int) -> tuple[float, float, float, float]:
    row, column = divmod(slot, 2)
    x0 = _LEFT + column * (_CELL_W + _GAP)
    y0 = _GRID_TOP + row * (_CELL_H + _GAP)
    return (x0, y0, x0 + _CELL_W, y0 + _CELL_H)


def _optional_import(module: str, package: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"building {purpose} needs {package}, a development dependency: pip install 'mmrag[dev]' ({exc})"
        ) from None
