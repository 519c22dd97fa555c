"""Turn PIL images into the base64 data URLs that OpenAI-compatible chat servers accept as image parts."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
from PIL import Image, ImageOps

from mmrag.errors import ConfigError, ExtractionError

_MIME_BY_FORMAT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# Below these the picture stops being worth sending; a max_bytes that needs less is a config error.
_MIN_QUALITY = 30
_MIN_SIDE = 16


def image_to_data_url(
    image: Image.Image,
    max_side: int = 1024,
    fmt: str = "JPEG",
    quality: int = 85,
    max_bytes: int | None = None,
) -> str:
    """Encode `image` as "data:image/jpeg;base64,..." (or png/webp), longest side at most `max_side`.

    `max_bytes` bounds the encoded image file (the base64 text is 4/3 of that): quality, then size, is
    stepped down until it fits.
    """
    payload = encode_image(image, max_side=max_side, fmt=fmt, quality=quality, max_bytes=max_bytes)
    mime = _MIME_BY_FORMAT[fmt.upper()]
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def encode_image(
    image: Image.Image,
    max_side: int = 1024,
    fmt: str = "JPEG",
    quality: int = 85,
    max_bytes: int | None = None,
) -> bytes:
    """The encoded file behind `image_to_data_url`."""
    fmt = fmt.upper()
    if fmt not in _MIME_BY_FORMAT:
        raise ConfigError(
            f"image format {fmt!r} is not supported for VLM requests; use one of {sorted(_MIME_BY_FORMAT)}"
        )
    if max_side < 1:
        raise ConfigError(f"max_side must be at least 1 pixel, got {max_side}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be between 1 and 100, got {quality}")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"max_bytes must be positive, got {max_bytes}")

    rgb = downscale(to_rgb(image), max_side)
    encoded = _encode(rgb, fmt, quality)
    if max_bytes is None or len(encoded) <= max_bytes:
        return encoded

    qualities = (
        [q for q in (quality, 75, 65, 55, 45, 35, _MIN_QUALITY) if q <= quality]
        if fmt != "PNG"
        else [quality]
    )
    current = rgb
    while True:
        for step_quality in qualities:
            encoded = _encode(current, fmt, step_quality)
            if len(encoded) <= max_bytes:
                return encoded
        if min(current.size) <= _MIN_SIDE:
            raise ConfigError(
                f"cannot fit the image into max_bytes={max_bytes}: it is still {len(encoded)} bytes at "
                f"{current.width}x{current.height} px and quality {qualities[-1]}"
            )
        # Bytes grow roughly with pixel count, so shrink both sides by the square root of the overshoot.
        shrink = min(0.9, max(0.5, math.sqrt(max_bytes / len(encoded)) * 0.95))
        new_size = (
            max(_MIN_SIDE, round(current.width * shrink)),
            max(_MIN_SIDE, round(current.height * shrink)),
        )
        current = rgb.resize(new_size, Image.Resampling.LANCZOS)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels the way a viewer would show them: EXIF rotation applied, transparency over white."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt file behind a lazy image
        raise ExtractionError(f"cannot read image for the VLM request: {exc}") from exc
    if image.width < 1 or image.height < 1:
        raise ExtractionError(f"cannot send an empty image ({image.width}x{image.height} px) to a VLM")
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float scans would clip to white with a plain convert; stretch them to 8 bits instead.
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longest side is at most `max_side`, keeping the aspect ratio; never enlarge."""
    longest = max(image.size)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()
