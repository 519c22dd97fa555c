"""Image files -> one RGB picture each, safely: size checked before decoding, truncation is an error.

Pillow's own decompression-bomb guard is process-global (Image.MAX_IMAGE_PIXELS), so it is left alone and
the configured limit is checked here against the header size, which Image.open reads without decoding.
Pillow still raises its DecompressionBombError above twice its limit (turned into ExtractionError here) and
may warn between its limit and ours; the configured max_image_pixels is the one that decides.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from mmrag.errors import ExtractionError
from mmrag.ingest.items import ExtractedItem, Modality, sha256_bytes
from mmrag.settings import IngestSettings

WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_THUMBNAIL_FORMAT = "WEBP" if features.check("webp") else "JPEG"


def load_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    """Decode an image file or its bytes into a fully loaded RGB image, orientation applied.

    Animated images give their first frame; transparency is composited on white. Any failure raises
    ExtractionError: "image too large: ..." before any pixel is decoded, "corrupt or truncated image: ...".
    """
    image, _ = _load_with_format(source, max_pixels)
    return image


def _load_with_format(source: Path | bytes, max_pixels: int) -> tuple[Image.Image, str | None]:
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
