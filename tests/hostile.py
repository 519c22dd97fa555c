"""The hostile-input corpus of the reliability campaign (issue #16), one folder per class of bad input.

Each class is a folder under the corpus root holding the hostile file (and, where the class is about the
rest of the run going on, good files beside it). `EXPECTED` says what indexing each folder must give:
the status of every file by name, and for some the number of items. tests/hostile_driver.py indexes the
folders one by one in a subprocess and reports each class's outcome and the process's peak memory.

Everything is built from real data (scikit-image, scikit-learn photos; PyMuPDF PDFs) or is the hostile
bytes themselves.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmrag.ingest.mupdf import pymupdf
from tests.realdata import PHOTO_DESCRIPTIONS, photo_bytes, photo_image

# Settings the driver indexes with: limits small enough to be crossed by files a test can write quickly.
MAX_PDF_PAGES = 20
BIG_TEXT_BYTES = 200 * 1024 * 1024  # the campaign's 200 MB text file (over the 16 MiB default limit)

CLASSES = [
    "corrupt_jpeg",
    "truncated_png",
    "decompression_bomb",
    "strip_tall",
    "strip_wide",
    "zip_named_jpg",
    "encrypted_pdf",
    "damaged_pdf",
    "pdf_oversized_image",
    "pdf_too_many_pages",
    "empty_jpeg",
    "name_not_utf8",
    "symlink_outside",
    "symlink_loop",
    "fifo",
    "text_latin1",
    "binary_named_txt",
    "text_200mb",
    "text_one_long_line",
    "tiff_multipage_rgb",
    "png_16bit",
    "jpeg_cmyk",
    "gif_300_frames",
    "long_file_name",
    "deep_nesting",
]


@dataclass(frozen=True)
class Expected:
    statuses: dict[str, str]  # file name (printable) -> indexed | failed | unsupported
    reasons: dict[str, str] = field(default_factory=dict)  # file name -> words its failure reason holds
    items: dict[str, int] = field(default_factory=dict)  # file name -> items indexed


def _png(width: int, height: int, colour: tuple[int, int, int] = (20, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG whose header announces width x height grey pixels, with an IDAT that inflates to all
    of them from a few KB: what a decompression bomb is."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width
    body = b"".join(compressor.compress(row) for _ in range(min(height, 64))) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _pdf(pages: list[str], image: bytes | None = None) -> bytes:
    doc = pymupdf.open()
    for text in pages:
        page = doc.new_page()
        page.insert_text((72, 72), text)
        if image is not None:
            page.insert_image(pymupdf.Rect(72, 100, 300, 300), stream=image)
    data = doc.tobytes()
    doc.close()
    return data


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height: readers that trust the header,
    as MuPDF does before it decodes, see a huge image."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, "JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write_corpus(root: Path) -> dict[str, Expected]:
    """Write every class under root/<class>/ and return class -> what indexing it must give."""
    expected: dict[str, Expected] = {}

    def put(cls: str, name: str | bytes, data: bytes) -> Path:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(name))))
        path.write_bytes(data)
        return path

    good = photo_bytes("coffee")
    cat = photo_bytes("chelsea")

    put("corrupt_jpeg", "corrupt.jpg", good[:200] + os.urandom(4000))
    expected["corrupt_jpeg"] = Expected({"corrupt.jpg": "failed"}, {"corrupt.jpg": "corrupt"})

    put("truncated_png", "truncated.png", _png(300, 200)[:120])
    expected["truncated_png"] = Expected({"truncated.png": "failed"}, {"truncated.png": "corrupt"})

    put("decompression_bomb", "bomb.png", _png_bomb(60000, 60000))
    expected["decompression_bomb"] = Expected({"bomb.png": "failed"}, {"bomb.png": "too large"})

    put("strip_tall", "tall.png", _png(1, 100000))
    expected["strip_tall"] = Expected({"tall.png": "indexed"}, items={"tall.png": 1})

    put("strip_wide", "wide.png", _png(100000, 1))
    expected["strip_wide"] = Expected({"wide.png": "indexed"}, items={"wide.png": 1})

    put("zip_named_jpg", "photo.jpg", b"PK\x03\x04" + os.urandom(2000))
    expected["zip_named_jpg"] = Expected({"photo.jpg": "unsupported"})

    encrypted = pymupdf.open()
    encrypted.new_page().insert_text((72, 72), "secret")
    put(
        "encrypted_pdf", "locked.pdf", encrypted.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="pw")
    )
    expected["encrypted_pdf"] = Expected({"locked.pdf": "failed"}, {"locked.pdf": "encrypted"})

    put("damaged_pdf", "damaged.pdf", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog" + os.urandom(300))
    expected["damaged_pdf"] = Expected({"damaged.pdf": "failed"}, {"damaged.pdf": "pdf"})

    # One page of text with a 20000x20000 JPEG on it: MuPDF refuses to decode it ("Overly large image").
    put(
        "pdf_oversized_image",
        "report.pdf",
        _pdf([PHOTO_DESCRIPTIONS["rocket"][:200]], _jpeg_claiming(20000, 20000)),
    )
    expected["pdf_oversized_image"] = Expected({"report.pdf": "indexed"}, items={"report.pdf": 1})

    put("pdf_too_many_pages", "long.pdf", _pdf([f"page {i}" for i in range(MAX_PDF_PAGES + 5)]))
    expected["pdf_too_many_pages"] = Expected({"long.pdf": "failed"}, {"long.pdf": "ingest.max_pdf_pages"})

    put("empty_jpeg", "empty.jpg", b"")
    expected["empty_jpeg"] = Expected({"empty.jpg": "failed"}, {"empty.jpg": "empty"})

    put("name_not_utf8", b"caf\xe9-\xff.jpg", cat)
    expected["name_not_utf8"] = Expected({"caf\\xe9-\\xff.jpg": "indexed"}, items={"caf\\xe9-\\xff.jpg": 1})

    link_folder = root / "symlink_outside"
    put("symlink_outside", "cat.jpg", cat)
    os.symlink("/etc/passwd", link_folder / "passwd.txt")
    expected["symlink_outside"] = Expected({"cat.jpg": "indexed", "passwd.txt": "unsupported"})

    loop_folder = root / "symlink_loop"
    loop_folder.mkdir()
    os.symlink(loop_folder / "b.jpg", loop_folder / "a.jpg")
    os.symlink(loop_folder / "a.jpg", loop_folder / "b.jpg")
    os.symlink(loop_folder, loop_folder / "self")
    put("symlink_loop", "cat.jpg", cat)
    expected["symlink_loop"] = Expected(
        {"a.jpg": "unsupported", "b.jpg": "unsupported", "self": "unsupported", "cat.jpg": "indexed"}
    )

    fifo_folder = root / "fifo"
    fifo_folder.mkdir()
    os.mkfifo(fifo_folder / "pipe.txt")
    expected["fifo"] = Expected({"pipe.txt": "unsupported"})

    latin1 = PHOTO_DESCRIPTIONS["coffee"].replace("cup", "tasse caf\u00e9 cr\u00e8me")
    put("text_latin1", "notes.txt", latin1.encode("latin-1", "replace"))
    expected["text_latin1"] = Expected({"notes.txt": "indexed"})

    put("binary_named_txt", "data.txt", bytes(range(256)) * 40)
    expected["binary_named_txt"] = Expected({"data.txt": "unsupported"})

    # The campaign's 200 MB text file, batched with three small files: it fails alone, at once.
    big_folder = root / "text_200mb"
    put("text_200mb", "a.md", PHOTO_DESCRIPTIONS["astronaut"].encode())
    put("text_200mb", "b.txt", PHOTO_DESCRIPTIONS["camera"].encode())
    line = (PHOTO_DESCRIPTIONS["rocket"].replace("\n", " ") + "\n").encode()
    with open(big_folder / "big.txt", "wb") as handle:
        block = line * max(1, (1 << 20) // len(line))
        for _ in range(BIG_TEXT_BYTES // len(block) + 1):
            handle.write(block)
    put("text_200mb", "c.txt", PHOTO_DESCRIPTIONS["coins"].encode())
    expected["text_200mb"] = Expected(
        {"a.md": "indexed", "b.txt": "indexed", "big.txt": "failed", "c.txt": "indexed"},
        {"big.txt": "ingest.max_text_bytes"},
    )

    # 256 KiB on one line, no newline at all: read in pieces cut at spaces.
    words = PHOTO_DESCRIPTIONS["astronaut"].split()
    one_line = " ".join(words[i % len(words)] for i in range(50_000)).encode()[: 1 << 18]
    put("text_one_long_line", "line.txt", one_line)
    expected["text_one_long_line"] = Expected({"line.txt": "indexed"})

    import skimage

    tiff = Path(skimage.data.__file__).parent / "multipage_rgb.tif"
    put("tiff_multipage_rgb", "pages.tif", tiff.read_bytes())
    expected["tiff_multipage_rgb"] = Expected({"pages.tif": "indexed"}, items={"pages.tif": 1})

    deep = Image.fromarray(np.asarray(photo_image("camera").convert("L"), dtype=np.uint16) * 257)
    buffer = io.BytesIO()
    deep.save(buffer, "PNG")
    put("png_16bit", "camera16.png", buffer.getvalue())
    expected["png_16bit"] = Expected({"camera16.png": "indexed"})

    buffer = io.BytesIO()
    photo_image("astronaut").convert("CMYK").save(buffer, "JPEG")
    put("jpeg_cmyk", "cmyk.jpg", buffer.getvalue())
    expected["jpeg_cmyk"] = Expected({"cmyk.jpg": "indexed"})

    frames = [photo_image("coffee").resize((64, 48)).rotate(i) for i in range(300)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=10)
    put("gif_300_frames", "spin.gif", buffer.getvalue())
    expected["gif_300_frames"] = Expected({"spin.gif": "indexed"}, items={"spin.gif": 1})

    long_name = "c" * 240 + ".jpg"
    put("long_file_name", long_name, cat)
    expected["long_file_name"] = Expected({long_name: "indexed"})

    deep_folder = root / "deep_nesting"
    nested = deep_folder.joinpath(*["d"] * 150)
    nested.mkdir(parents=True)
    (nested / "cat.jpg").write_bytes(cat)
    expected["deep_nesting"] = Expected({"cat.jpg": "indexed"})

    return expected


def write_query_strip(path: Path) -> Path:
    """The campaign's 475-byte query image: a 1x100000 PNG."""
    path.write_bytes(_png(1, 100000, (0, 0, 0)))
    return path
