from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.errors import ExtractionError
from mmrag.ingest.images import extract_image_file, load_image, make_thumbnail, thumbnail_format
from mmrag.ingest.items import Modality, sha256_bytes
from mmrag.settings import IngestSettings
from tests.realdata import photo_bytes, photo_image, write_photos

SETTINGS = IngestSettings()
LIMIT = SETTINGS.max_image_pixels


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def _mean_abs_diff(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    left = a if isinstance(a, np.ndarray) else _pixels(a)
    right = b if isinstance(b, np.ndarray) else _pixels(b)
    return float(np.abs(left.astype(np.int16) - right.astype(np.int16)).mean())


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


# Lossless formats must give the photo back exactly; lossy ones within a small mean error; GIF is quantised
# to 256 colours.
@pytest.mark.parametrize(
    ("fmt", "pillow_format", "tolerance"),
    [
        ("jpg", "JPEG", 4.0),
        ("png", "PNG", 0.0),
        ("webp", "WEBP", 4.0),
        ("gif", "GIF", 12.0),
        ("bmp", "BMP", 0.0),
        ("tiff", "TIFF", 0.0),
    ],
)
def test_extract_image_file_formats(tmp_path: Path, fmt: str, pillow_format: str, tolerance: float) -> None:
    path = write_photos(tmp_path, ["astronaut"], fmt=fmt)["astronaut"]
    (item,) = extract_image_file(path, SETTINGS)

    assert item.modality is Modality.IMAGE
    assert item.content_hash == sha256_bytes(path.read_bytes())
    assert item.image is not None and item.image.mode == "RGB"
    assert item.image.size == (512, 512)
    assert item.bbox == (0.0, 0.0, 512.0, 512.0)
    assert item.meta == {"width": 512, "height": 512, "format": pillow_format}
    assert _mean_abs_diff(item.image, photo_image("astronaut")) <= tolerance


def test_grey_photo_becomes_rgb_with_equal_channels(tmp_path: Path) -> None:
    path = write_photos(tmp_path, ["camera"], fmt="png")["camera"]
    image = load_image(path, LIMIT)
    rgb = _pixels(image)
    assert image.mode == "RGB"
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == _pixels(photo_image("camera"))).all()


def test_load_image_from_bytes_equals_from_path(tmp_path: Path) -> None:
    path = write_photos(tmp_path, ["coffee"], fmt="png")["coffee"]
    assert (_pixels(load_image(path.read_bytes(), LIMIT)) == _pixels(load_image(path, LIMIT))).all()


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    cat = photo_image("chelsea")
    inverted = Image.fromarray(255 - np.asarray(cat))
    path = tmp_path / "blink.gif"
    cat.save(path, save_all=True, append_images=[inverted], duration=200, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2

    image = load_image(path, LIMIT)
    assert image.mode == "RGB" and image.size == cat.size
    assert _mean_abs_diff(image, cat) < 12
    assert _mean_abs_diff(image, inverted) > 60


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    camera = np.asarray(photo_image("camera"), dtype=np.uint16)
    path = _save(Image.fromarray(camera * 257), tmp_path / "camera16.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored as 16-bit

    rgb = _pixels(load_image(path, LIMIT))
    assert np.abs(rgb[..., 0] - camera).max() <= 1
    assert rgb.max() > 200, "16-bit values were clipped instead of scaled"


def test_cmyk_jpeg_comes_back_as_the_same_colours(tmp_path: Path) -> None:
    original = photo_image("astronaut")
    path = _save(original.convert("CMYK"), tmp_path / "astronaut_cmyk.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_image(path, LIMIT)
    assert image.mode == "RGB"
    assert _mean_abs_diff(image, original) < 6


def test_transparent_pixels_are_composited_on_white(tmp_path: Path) -> None:
    coffee = np.asarray(photo_image("coffee"))
    alpha = np.full(coffee.shape[:2], 255, dtype=np.uint8)
    alpha[:, :300] = 0
    path = _save(Image.fromarray(np.dstack([coffee, alpha])), tmp_path / "coffee_rgba.png")

    rgb = _pixels(load_image(path, LIMIT))
    assert (rgb[:, :300] == 255).all()
    assert (rgb[:, 300:] == coffee[:, 300:]).all()


def test_grey_with_alpha_and_palette_with_transparency(tmp_path: Path) -> None:
    coins = photo_image("coins")
    grey_alpha = coins.convert("LA")
    grey_alpha.putalpha(Image.new("L", coins.size, 0))
    la_path = _save(grey_alpha, tmp_path / "coins_la.png")
    assert (_pixels(load_image(la_path, LIMIT)) == 255).all()

    palette = photo_image("chelsea").quantize(colors=64)
    transparent_index = int(np.asarray(palette)[0, 0])
    p_path = _save(palette, tmp_path / "chelsea_p.png", transparency=transparent_index)
    rgb = _pixels(load_image(p_path, LIMIT))
    transparent = np.asarray(palette) == transparent_index
    assert (rgb[transparent] == 255).all()
    assert not (rgb[~transparent] == 255).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    cat = photo_image("chelsea")  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(cat, tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)

    image = load_image(path, LIMIT)
    assert image.size == (300, 451)
    upright = np.rot90(np.asarray(cat), k=-1)
    assert _mean_abs_diff(image, upright) < 5


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose pixel data is one short row: a bomb's header, nothing behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_header_is_rejected_before_any_decoding(tmp_path: Path) -> None:
    # No pixel data follows the header: had the decoder run, the error would be "truncated", not "too large".
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ExtractionError, match="corrupt or truncated image"):
        load_image(_png_header_only(300, 200), LIMIT)  # the same file, small: decoding does fail
    with pytest.raises(
        ExtractionError, match=r"image too large: 12000x12000 pixels exceeds the limit of 100000000"
    ):
        load_image(_png_header_only(12000, 12000), LIMIT)
    # Beyond Pillow's own hard limit its error is translated too.
    with pytest.raises(
        ExtractionError, match=r"image too large: 400000000 pixels exceeds the limit of 100000000"
    ):
        load_image(_png_header_only(20000, 20000), LIMIT)
    assert before == Image.MAX_IMAGE_PIXELS, "the process-wide Pillow limit must not be touched"


def test_configured_pixel_limit_applies_to_real_photos(tmp_path: Path) -> None:
    path = write_photos(tmp_path, ["astronaut"])["astronaut"]
    with pytest.raises(ExtractionError, match=r"image too large: 512x512 pixels exceeds the limit of 1000"):
        load_image(path, max_pixels=1000)
    settings = IngestSettings(max_image_pixels=512 * 512)
    assert extract_image_file(path, settings)[0].meta["width"] == 512


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_image_is_an_error_not_grey_padding(tmp_path: Path, fmt: str) -> None:
    data = photo_bytes("rocket", fmt)
    path = tmp_path / f"rocket.{fmt}"
    path.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ExtractionError, match="corrupt or truncated image"):
        load_image(path, LIMIT)
    with pytest.raises(ExtractionError, match="corrupt or truncated image"):
        extract_image_file(path, SETTINGS)


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("Chelsea the cat.", encoding="utf-8")
    with pytest.raises(ExtractionError, match="corrupt or truncated image"):
        load_image(notes, LIMIT)
    with pytest.raises(ExtractionError, match=r"not found|cannot read"):
        extract_image_file(tmp_path / "missing.jpg", SETTINGS)


def test_make_thumbnail_keeps_aspect_and_bounds_the_longest_side() -> None:
    rocket = photo_image("rocket")  # 640 x 427
    data = make_thumbnail(rocket, 128)
    with Image.open(io.BytesIO(data)) as thumbnail:
        assert thumbnail.format == thumbnail_format().upper()
        assert max(thumbnail.size) == 128
        assert abs(thumbnail.size[0] / thumbnail.size[1] - 640 / 427) < 0.02
        small = thumbnail.convert("RGB")
    assert _mean_abs_diff(small, rocket.resize(small.size, Image.Resampling.LANCZOS)) < 6
    assert rocket.size == (640, 427), "the source image must not be shrunk in place"
