"""Image files -> one RGB picture each, safely: size checked before decoding, truncation is an error; and
the one bounded preparation (`fit_for_model`) every image goes through before a model sees it.

Pillow's own decompression-bomb guard is process-global (Image.MAX_IMAGE_PIXELS), so it is left alone and
the configured limit is checked here against the header size, which Image.open reads without decoding.
Pillow still raises its DecompressionBombError above twice its limit (turned into ExtractionError here) and
may warn between its limit and ours; the configured max_image_pixels is the one that decides.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError, features

from mmrag.errors import ExtractionError
from mmrag.ingest.items import ExtractedItem, Modality, sha256_bytes
from mmrag.settings import IngestSettings

if TYPE_CHECKING:
    import numpy as np

WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_THUMBNAIL_FORMAT = "WEBP" if features.check("webp") else "JPEG"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# What a model is handed: models resize the short side to their input size (224-448 px), so a picture
# larger than this only costs memory, and a strip thinner than 1:MODEL_MAX_ASPECT would be scaled into a
# tensor of millions of pixels (a 1x100000 PNG became 224 x 22,400,000 in a captioner).
MODEL_MAX_SIDE = 1024
MODEL_MAX_ASPECT = 8  # longer side / shorter side, after padding


def load_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    """Decode an image file or its bytes into a fully loaded RGB image, orientation applied.

    Animated images give their first frame; transparency is composited on white. Any failure raises
    ExtractionError: "image too large: ..." before any pixel is decoded, "corrupt or truncated image: ...".
    """
    image, _ = _load_with_format(source, max_pixels)
    return image


def fit_for_model(
    image: Image.Image, max_side: int = MODEL_MAX_SIDE, max_aspect: int = MODEL_MAX_ASPECT
) -> Image.Image:
    """The picture every model gets (ingest, query, captioner, OCR, answer): longest side at most
    `max_side`, then an extreme strip padded with white to 1:`max_aspect`. The result has at most
    max_side**2 pixels whatever came in. Returns the image itself when it is already within bounds."""
    if image.mode != "RGB":
        image = _to_rgb(image)
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    width, height = image.size
    short = -(-max(width, height) // max_aspect)  # ceil: the padded strip is never thinner than 1:max_aspect
    if min(width, height) >= short:
        return image
    canvas = Image.new("RGB", (max(width, short), max(height, short)), WHITE)
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def load_model_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    """A query image (CLI, REST, ask) as models take it: decoded safely, then `fit_for_model`."""
    return fit_for_model(load_image(source, max_pixels))


def _load_with_format(source: Path | bytes, max_pixels: int) -> tuple[Image.Image, str | None]:
    try:
        return _load_with_pillow(source, max_pixels)
    except ExtractionError as pillow_error:
        if str(pillow_error).startswith("image too large") or not _is_tiff(source):
            raise
        # Pillow reads few TIFF layouts (not multi-sample RGB pages written by scikit-image, for one);
        # tifffile reads what scientific instruments and imaging libraries write.
        data = source if isinstance(source, bytes) else source.read_bytes()
        return _load_tiff(data, max_pixels), "TIFF"


def _is_tiff(source: Path | bytes) -> bool:
    if isinstance(source, bytes):
        return source[:4] in _TIFF_MAGIC
    try:
        with open(source, "rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _load_tiff(data: bytes, max_pixels: int) -> Image.Image:
    import numpy as np

    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ExtractionError("corrupt or unsupported TIFF (tifffile is not installed)") from exc
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tiff:
            page = tiff.pages.first
            shape = page.shape
            axes = page.axes
            height = shape[axes.index("Y")] if "Y" in axes else 0
            width = shape[axes.index("X")] if "X" in axes else 0
            _check_pixel_count((int(width), int(height)), max_pixels)
            pixels = page.asarray()
    except ExtractionError:
        raise
    except Exception as exc:
        raise ExtractionError(f"corrupt or truncated image: TIFF: {exc}") from exc
    return _array_to_rgb(np.asarray(pixels), axes)


def _array_to_rgb(pixels: np.ndarray, axes: str) -> Image.Image:
    """A TIFF page's samples (Y, X and maybe S for samples per pixel, in any order) as 8-bit RGB."""
    import numpy as np

    order = [axes.index(a) for a in "YXS" if a in axes]
    pixels = np.transpose(pixels, order + [i for i in range(pixels.ndim) if i not in order])
    while pixels.ndim > 3:  # extra axes (planes, time): the first of each
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float64)
        if np.issubdtype(pixels.dtype, np.integer):
            values = values * (255.0 / max(float(np.iinfo(pixels.dtype).max), 1.0))
        else:
            low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        pixels = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    channels = pixels.shape[2]
    if channels == 1:
        return Image.fromarray(pixels[..., 0], "L").convert("RGB")
    if channels == 2:  # grey + alpha
        pixels = np.concatenate([pixels[..., :1]] * 3 + [pixels[..., 1:2]], axis=2)
        channels = 4
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :4] if channels >= 4 else pixels[..., :3]))
    return _to_rgb(image)


def _load_with_pillow(source: Path | bytes, max_pixels: int) -> tuple[Image.Image, str | None]:
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as opened:
            _check_pixel_count(opened.size, max_pixels)
            image_format = opened.format
            opened.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame is the picture
            opened.load()  # decodes everything now: a truncated file fails here, not later in a worker
            oriented = ImageOps.exif_transpose(opened)  # always a new, loaded image
            return _to_rgb(oriented), image_format
    except ExtractionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's global limit (its error, or its warning where warnings are turned into errors).
        raise ExtractionError(_pillow_bomb_message(exc, max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ExtractionError("corrupt or truncated image: not a format Pillow can read") from exc
    except FileNotFoundError as exc:
        raise ExtractionError(f"image file not found: {source}") from exc
    except Exception as exc:
        # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError ... on
        # broken files, and EXIF parsing adds its own; for the user they all mean the same thing.
        raise ExtractionError(f"corrupt or truncated image: {exc}") from exc


def make_thumbnail(image: Image.Image, size: int) -> bytes:
    """WebP (JPEG where Pillow lacks WebP) bytes of the image shrunk so its longest side is at most `size`."""
    thumbnail = image.convert("RGB") if image.mode != "RGB" else image.copy()
    thumbnail.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumbnail.save(buffer, format=_THUMBNAIL_FORMAT, quality=80)
    return buffer.getvalue()


def thumbnail_format() -> str:
    """Either "webp" or "jpeg": what make_thumbnail writes here, for file names and content types."""
    return _THUMBNAIL_FORMAT.lower()


def extract_image_file(path: Path, settings: IngestSettings) -> list[ExtractedItem]:
    """The one item of an image file; the file is read once so hash and pixels come from the same bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractionError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    image, image_format = _load_with_format(data, settings.max_image_pixels)
    width, height = image.size
    return [
        ExtractedItem(
            modality=Modality.IMAGE,
            content_hash=sha256_bytes(data),
            bbox=(0.0, 0.0, float(width), float(height)),
            image=image,
            meta={"width": width, "height": height, "format": image_format},
        )
    ]


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ExtractionError(f"corrupt or truncated image: invalid size {width}x{height}")
    if width * height > max_pixels:
        raise ExtractionError(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")


def _pillow_bomb_message(exc: Exception, max_pixels: int) -> str:
    match = _PILLOW_BOMB_PIXELS.search(str(exc))
    pixels = int(match.group(1)) if match else None
    if pixels is not None and pixels > max_pixels:
        return f"image too large: {pixels} pixels exceeds the limit of {max_pixels}"
    limit = Image.MAX_IMAGE_PIXELS
    return f"image too large: {pixels or 'its'} pixels exceed Pillow's decompression-bomb limit ({limit})"


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P":
        # Palette transparency (tRNS / GIF transparent index) only shows up after converting to RGBA.
        has_transparency = "transparency" in image.info
        image = image.convert("RGBA" if has_transparency else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey -> 8-bit grey by scaling, not clipping (Pillow's convert("L") clips at 255)."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    elif image.mode == "I":
        # 32-bit int images from PNG/TIFF usually hold 16-bit samples; only rescale what exceeds 8 bits.
        peak = float(values.max(initial=0.0))
        scaled = values / 257.0 if peak > 255 else values
    else:  # "F": arbitrary range, stretch to 0..255
        low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
