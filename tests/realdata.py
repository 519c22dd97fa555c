"""Real photos and documents for tests, written to a folder the test owns (pytest's tmp_path).

Everything comes from packages installed offline (see /work/shared/DATA.md): scikit-image's sample photos,
scikit-learn's china.jpg and flower.jpg, matplotlib's grace_hopper.jpg. Descriptions are the photos' own
docstrings, so text and pictures agree without anyone here making up content.

    from tests.realdata import PHOTOS, write_photos, write_pdf_with_photos, write_markdown, photo_rect
"""

from __future__ import annotations

import functools
import inspect
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from mmrag.ingest.mupdf import pymupdf

__all__ = [
    "PAGE_SIZE",
    "PHOTOS",
    "PHOTO_DESCRIPTIONS",
    "TEXT_RECT",
    "photo_bytes",
    "photo_image",
    "photo_rect",
    "write_markdown",
    "write_pdf_with_photos",
    "write_photos",
]


def _sklearn_sample(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# name -> loader of an (H, W, 3) or (H, W) uint8 array. All are in the installed wheels (no download).
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,  # Eileen Collins, 512x512 colour
    "chelsea": skimage.data.chelsea,  # a cat, 451x300 colour
    "coffee": skimage.data.coffee,  # a coffee cup, 600x400 colour
    "rocket": skimage.data.rocket,  # Falcon 9 launch, 640x427 colour
    "camera": skimage.data.camera,  # man with a camera, 512x512 grey
    "coins": skimage.data.coins,  # Greek coins, 384x303 grey
    "moon": skimage.data.moon,  # lunar surface, 512x512 grey
    "clock": skimage.data.clock,  # motion-blurred wall clock, 400x300 grey
    "hubble_deep_field": skimage.data.hubble_deep_field,  # 1000x872 colour
    "page": skimage.data.page,  # a scanned page of text, 384x191 grey
    "china": _sklearn_sample("china.jpg"),  # a temple in China, 640x427 colour
    "flower": _sklearn_sample("flower.jpg"),  # a flower, 640x427 colour
    "grace_hopper": _grace_hopper,  # Grace Hopper in naval uniform, 512x600 colour
}

# Captions for the photos without a docstring of their own (facts about the pictures, from their sources).
_EXTRA_DESCRIPTIONS = {
    "china": "Photograph of a Chinese temple with a curved tiled roof (scikit-learn's china.jpg).",
    "flower": "Close-up photograph of a flower in bloom, shipped with scikit-learn as flower.jpg.",
    "grace_hopper": (
        "Portrait of Rear Admiral Grace Hopper in United States Navy uniform. Grace Hopper was a computer "
        "scientist who worked on the Harvard Mark I and led the development of COBOL."
    ),
}

_SECTION_TITLE = re.compile(r"^(Notes|Returns|References|Examples|See Also|Parameters)\s*$")


@functools.cache
def _photo_array(name: str) -> np.ndarray:
    if name not in PHOTOS:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(sorted(PHOTOS))}")
    array = np.asarray(PHOTOS[name]())
    array.setflags(write=False)  # cached and shared between tests
    return array


def photo_image(name: str) -> Image.Image:
    """The photo as a PIL image (RGB, or L for the grey ones); a fresh copy each call."""
    array = _photo_array(name)
    return Image.fromarray(np.ascontiguousarray(array)).copy()


def photo_bytes(name: str, fmt: str = "jpg") -> bytes:
    """The photo encoded as `fmt` (jpg, png, webp, gif, bmp, tiff); same bytes for the same arguments."""
    return _encoded(name, fmt.lower().lstrip("."))


@functools.cache
def _encoded(name: str, fmt: str) -> bytes:
    pillow_format = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(fmt, fmt.upper())
    image = photo_image(name)
    buffer = io.BytesIO()
    options = {"quality": 90} if pillow_format in ("JPEG", "WEBP") else {}
    image.save(buffer, format=pillow_format, **options)
    return buffer.getvalue()


def _describe(name: str) -> str:
    """The first paragraphs of a photo's docstring (up to its Notes/Returns), without link lines."""
    if name in _EXTRA_DESCRIPTIONS:
        return _EXTRA_DESCRIPTIONS[name]
    doc = inspect.cleandoc(PHOTOS[name].__doc__ or name)
    kept: list[str] = []
    for line in doc.splitlines():
        if _SECTION_TITLE.match(line):
            break
        if "http" in line or "downloaded from" in line:
            continue
        kept.append(line)
    paragraphs = [" ".join(p.split()) for p in "\n".join(kept).split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


PHOTO_DESCRIPTIONS: dict[str, str] = {name: _describe(name) for name in PHOTOS}


def write_photos(folder: Path, names: Sequence[str] | None = None, fmt: str = "jpg") -> dict[str, Path]:
    """Write each named photo (all of PHOTOS by default) as folder/<name>.<fmt>; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = fmt.lower().lstrip(".")
    written: dict[str, Path] = {}
    for name in names if names is not None else list(PHOTOS):
        path = folder / f"{name}.{suffix}"
        path.write_bytes(photo_bytes(name, suffix))
        written[name] = path
    return written


# Layout of the PDFs written below, in PDF points (A4): text at the top, photos in a 2-column grid below.
PAGE_SIZE = (595.0, 842.0)
TEXT_RECT = (50.0, 40.0, 545.0, 260.0)
_GRID_TOP, _CELL_W, _CELL_H, _GAP, _LEFT = 280.0, 240.0, 170.0, 15.0, 50.0


def photo_rect(slot: int) -> tuple[float, float, float, float]:
    """Where write_pdf_with_photos puts the `slot`-th photo of a page (0-based): x0, y0, x1, y1 in points.

    Photos are stretched to fill the rect exactly (keep_proportion=False), so the image bbox MuPDF reports
    is this rect. Three rows of two fit on a page.
    """
    if not 0 <= slot < 6:
        raise ValueError(f"a page holds at most 6 photos, slot {slot} asked for")
    row, column = divmod(slot, 2)
    x0 = _LEFT + column * (_CELL_W + _GAP)
    y0 = _GRID_TOP + row * (_CELL_H + _GAP)
    return (x0, y0, x0 + _CELL_W, y0 + _CELL_H)


def write_pdf_with_photos(
    path: Path, pages: Sequence[Sequence[str]], text: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Write a real PDF: page i shows the photos pages[i] at photo_rect(0), photo_rect(1), ... and, when
    given, text[i] in TEXT_RECT. Returns photo name -> 1-based pages it appears on.

    Each photo is embedded as its JPEG bytes; a photo repeated on several pages is stored once (MuPDF
    reuses the image object), as real documents with a repeated figure or logo do.
    """
    if text is not None and len(text) != len(pages):
        raise ValueError(f"{len(pages)} pages but {len(text)} texts")
    appears_on: dict[str, list[int]] = {}
    doc = pymupdf.open()
    try:
        for index, names in enumerate(pages):
            page = doc.new_page(width=PAGE_SIZE[0], height=PAGE_SIZE[1])
            if text is not None and text[index]:
                _insert_text(page, text[index])
            for slot, name in enumerate(names):
                page.insert_image(
                    pymupdf.Rect(photo_rect(slot)), stream=photo_bytes(name), keep_proportion=False
                )
                pages_of_photo = appears_on.setdefault(name, [])
                if index + 1 not in pages_of_photo:
                    pages_of_photo.append(index + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc.save(path, garbage=3, deflate=True)
    finally:
        doc.close()
    return appears_on


def _insert_text(page: pymupdf.Page, text: str) -> None:
    # insert_textbox writes nothing when the text does not fit, so shrink the font until it does.
    for fontsize in (11, 10, 9, 8, 7, 6):
        spare = page.insert_textbox(pymupdf.Rect(TEXT_RECT), text, fontsize=fontsize, fontname="helv")
        if spare >= 0:
            return
    raise ValueError(f"text of {len(text)} characters does not fit in {TEXT_RECT} at 6 pt")


def write_markdown(path: Path) -> Path:
    """Write a multi-section Markdown guide to the sample photos (from their docstrings) and return its path.

    It has a title, an introduction, one '##' section per photo group, '###' sub-sections, a setext heading,
    links, and a fenced code block holding a '#' comment line that must not be taken for a heading.
    """
    d = PHOTO_DESCRIPTIONS
    astronaut_extra = (
        "The astronaut image is a common test picture for colour processing because it contains skin "
        "tones, a saturated flag and fine detail in the space suit."
    )
    lines = [
        "# Sample photographs shipped with scientific Python packages",
        "",
        "These pictures ship inside [scikit-image](https://scikit-image.org), scikit-learn and matplotlib,",
        "so programs can be tested on real photographs without downloading anything.",
        "",
        "## People",
        "",
        "### Astronaut",
        "",
        d["astronaut"],
        "",
        astronaut_extra,
        "",
        "### Grace Hopper",
        "",
        d["grace_hopper"],
        "",
        "## Animals and objects",
        "",
        "### Chelsea the cat",
        "",
        d["chelsea"],
        "",
        "### Coffee",
        "",
        d["coffee"],
        "",
        "### Coins",
        "",
        d["coins"],
        "",
        "Space",
        "-----",
        "",
        d["rocket"],
        "",
        d["hubble_deep_field"],
        "",
        d["moon"],
        "",
        "## Loading the photos",
        "",
        "Each photo is one function call away:",
        "",
        "```python",
        "# returns a (512, 512, 3) uint8 array",
        "from skimage import data",
        "image = data.astronaut()",
        "```",
        "",
        "![the cat](chelsea.png) Grey images such as the camera man have two dimensions instead of three.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
