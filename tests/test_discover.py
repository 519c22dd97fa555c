from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmrag.errors import ExtractionError
from mmrag.ingest.discover import DiscoveredFile, SkippedFile, discover, hash_file, sniff_kind
from mmrag.ingest.items import FileKind
from tests.realdata import (
    PHOTO_DESCRIPTIONS,
    photo_bytes,
    write_markdown,
    write_pdf_with_photos,
    write_photos,
)

BIG = 1 << 30
REPO_ROOT = Path(__file__).resolve().parent.parent


def _walk(
    *roots: Path, max_file_bytes: int = BIG
) -> tuple[dict[str, DiscoveredFile], dict[str, SkippedFile]]:
    """discover() split into found and skipped, keyed by path relative to the first root (or absolute)."""
    base = roots[0].resolve()
    found: dict[str, DiscoveredFile] = {}
    skipped: dict[str, SkippedFile] = {}
    for entry in discover(list(roots), max_file_bytes):
        key = str(entry.path.relative_to(base)) if entry.path.is_relative_to(base) else str(entry.path)
        if isinstance(entry, DiscoveredFile):
            found[key] = entry
        else:
            skipped[key] = entry
    return found, skipped


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "gif", "bmp", "tiff"])
def test_every_image_format_is_recognised_by_its_bytes(tmp_path: Path, fmt: str) -> None:
    path = write_photos(tmp_path, ["chelsea"], fmt=fmt)["chelsea"]
    assert sniff_kind(path) is FileKind.IMAGE
    # The name does not matter: the same bytes without an extension are still an image.
    renamed = path.rename(tmp_path / "chelsea")
    found, _ = _walk(tmp_path)
    assert found["chelsea"].kind is FileKind.IMAGE
    assert found["chelsea"].size == renamed.stat().st_size


def test_pdf_and_text_are_recognised(tmp_path: Path) -> None:
    write_pdf_with_photos(tmp_path / "report.pdf", [["coffee"]], text=[PHOTO_DESCRIPTIONS["coffee"]])
    write_markdown(tmp_path / "guide.md")
    for suffix in ("txt", "rst", "text", "markdown"):
        (tmp_path / f"coins.{suffix}").write_text(PHOTO_DESCRIPTIONS["coins"], encoding="utf-8")
    # PDF producers sometimes put junk before the header; readers accept it within the first KiB.
    (tmp_path / "prefixed.pdf").write_bytes(b"\r\n" * 100 + (tmp_path / "report.pdf").read_bytes())

    found, skipped = _walk(tmp_path)
    assert not skipped
    assert {name: entry.kind for name, entry in found.items()} == {
        "coins.markdown": FileKind.TEXT,
        "coins.rst": FileKind.TEXT,
        "coins.text": FileKind.TEXT,
        "coins.txt": FileKind.TEXT,
        "guide.md": FileKind.TEXT,
        "prefixed.pdf": FileKind.PDF,
        "report.pdf": FileKind.PDF,
    }


def test_content_wins_over_extension(tmp_path: Path) -> None:
    write_pdf_with_photos(tmp_path / "scan.jpg", [["page"]])  # a PDF named .jpg
    (tmp_path / "photo.txt").write_bytes(photo_bytes("moon", "png"))  # a PNG named .txt
    (tmp_path / "notes.png").write_text(PHOTO_DESCRIPTIONS["moon"], encoding="utf-8")  # text named .png
    (tmp_path / "BMW.txt").write_text(
        "BMW built the R32 motorcycle in 1923.", encoding="utf-8"
    )  # starts "BM"
    (tmp_path / "moon.py").write_text("from skimage import data\nmoon = data.moon()\n", encoding="utf-8")

    found, skipped = _walk(tmp_path)
    assert found["scan.jpg"].kind is FileKind.PDF
    assert found["photo.txt"].kind is FileKind.IMAGE
    assert found["BMW.txt"].kind is FileKind.TEXT
    assert skipped["notes.png"].unsupported
    assert "not a recognised image/PDF/text file" in skipped["notes.png"].reason
    assert skipped["moon.py"].unsupported and ".py" in skipped["moon.py"].reason


def test_text_rules_utf8_no_nul_and_a_cut_multibyte_character(tmp_path: Path) -> None:
    accents = "Café crème à la française, naïve façade. "
    ascii_text = (PHOTO_DESCRIPTIONS["clock"] + " ") * 100
    # 8191 ASCII bytes, then "é" (2 bytes): the 8 KiB sniff window ends inside that character.
    text = ascii_text.encode("ascii")[:8191] + (accents * 10).encode("utf-8")[3:]
    assert text[8191:8193] == "é".encode()
    (tmp_path / "menu.md").write_bytes(text)
    (tmp_path / "nul.txt").write_bytes(PHOTO_DESCRIPTIONS["clock"].encode() + b"\x00\x00rest")
    (tmp_path / "latin1.txt").write_bytes(accents.encode("latin-1"))
    (tmp_path / "controls.txt").write_bytes(bytes(range(1, 32)) * 20 + accents.encode("latin-1"))

    assert sniff_kind(tmp_path / "menu.md") is FileKind.TEXT
    assert sniff_kind(tmp_path / "nul.txt") is None
    # Not UTF-8 but text (an older note in latin-1): indexed, decoded as latin-1; control bytes mean binary.
    assert sniff_kind(tmp_path / "latin1.txt") is FileKind.TEXT
    assert sniff_kind(tmp_path / "controls.txt") is None


def test_sorted_deterministic_walk_into_subfolders(tmp_path: Path) -> None:
    # Written out of order on purpose.
    for folder, names in (("zoo", ["chelsea"]), ("b", ["rocket", "coffee"]), ("a/deep/er", ["moon"])):
        write_photos(tmp_path / folder, names)
    write_photos(tmp_path, ["coins"])

    paths = [entry.path for entry in discover([tmp_path], BIG)]
    relative = [str(path.relative_to(tmp_path.resolve())) for path in paths]
    assert relative == ["a/deep/er/moon.jpg", "b/coffee.jpg", "b/rocket.jpg", "coins.jpg", "zoo/chelsea.jpg"]
    assert paths == [entry.path for entry in discover([tmp_path], BIG)]


def test_discovered_files_are_absolute_resolved_and_inside_their_root(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", ["astronaut", "camera"])
    (tmp_path / "other").mkdir()
    dotted = tmp_path / "other" / ".." / "photos"
    found, _ = _walk(dotted)
    assert sorted(found) == ["astronaut.jpg", "camera.jpg"]
    for entry in found.values():
        assert entry.root == (tmp_path / "photos").resolve()
        assert entry.path.is_absolute() and ".." not in entry.path.parts
        assert entry.path.is_relative_to(entry.root)
        assert entry.mtime == entry.path.stat().st_mtime


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_photos(outside, ["astronaut", "rocket"])
    root = tmp_path / "root"
    write_photos(root, ["chelsea"])
    (root / "to_outside_dir").symlink_to(outside, target_is_directory=True)
    (root / "to_outside_file.jpg").symlink_to(outside / "rocket.jpg")
    (root / "to_inside_file.jpg").symlink_to(root / "chelsea.jpg")
    (root / "up").symlink_to("..", target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")

    found, skipped = _walk(root)
    assert sorted(found) == ["chelsea.jpg"]
    for entry in found.values():
        assert not entry.path.is_relative_to(outside.resolve())
    assert {name: entry.unsupported for name, entry in skipped.items()} == {
        "dangling.jpg": True,
        "to_inside_file.jpg": True,
        "to_outside_dir": True,
        "to_outside_file.jpg": True,
        "up": True,
    }
    assert skipped["to_inside_file.jpg"].reason == "symlink"
    assert skipped["to_outside_dir"].reason == f"symlink outside {root.resolve()}"
    assert skipped["up"].reason.startswith("symlink outside")
    # The link's own path is reported, never its target.
    assert skipped["to_outside_file.jpg"].path == root.resolve() / "to_outside_file.jpg"


def test_a_root_given_through_a_symlink_is_resolved(tmp_path: Path) -> None:
    write_photos(tmp_path / "real", ["coins"])
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    (entry,) = discover([tmp_path / "alias"], BIG)
    assert isinstance(entry, DiscoveredFile)
    assert entry.root == (tmp_path / "real").resolve()
    assert entry.path == (tmp_path / "real" / "coins.jpg").resolve()


def test_hidden_files_and_folders_are_skipped_quietly(tmp_path: Path) -> None:
    write_photos(tmp_path, ["coffee"])
    write_photos(tmp_path / ".cache", ["astronaut"])
    write_photos(tmp_path / "album" / ".thumbs", ["chelsea"])
    (tmp_path / ".notes.md").write_text(PHOTO_DESCRIPTIONS["coffee"], encoding="utf-8")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")

    entries = list(discover([tmp_path], BIG))
    assert [entry.path.name for entry in entries] == ["coffee.jpg"]


def test_a_hidden_root_given_explicitly_is_walked(tmp_path: Path) -> None:
    write_photos(tmp_path / ".archive", ["clock"])
    found, _ = _walk(tmp_path / ".archive")
    assert list(found) == ["clock.jpg"]


def test_oversize_files_are_reported_unless_unsupported_anyway(tmp_path: Path) -> None:
    photos = write_photos(tmp_path, ["hubble_deep_field", "page"])
    (tmp_path / "archive.zip").write_bytes(b"PK\x03\x04" + photo_bytes("hubble_deep_field"))
    limit = photos["page"].stat().st_size + 1

    found, skipped = _walk(tmp_path, max_file_bytes=limit)
    assert list(found) == ["page.jpg"]
    big = skipped["hubble_deep_field.jpg"]
    assert not big.unsupported
    assert big.reason.startswith("larger than the ") and "limit" in big.reason
    assert skipped["archive.zip"].unsupported


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "empty.pdf").touch()
    (tmp_path / "__init__.py").touch()
    _, skipped = _walk(tmp_path)
    assert skipped["empty.jpg"] == SkippedFile(skipped["empty.jpg"].path, "empty file", unsupported=False)
    assert not skipped["empty.pdf"].unsupported
    # An empty file of a type we never index is not a failure worth reporting.
    assert skipped["__init__.py"].unsupported and skipped["__init__.py"].reason == "empty file"


def test_fifo_is_skipped_without_opening_and_a_folder_named_like_a_photo_is_walked(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "stream.jpg")
    write_photos(tmp_path / "holiday.jpg", ["china"])  # a folder called holiday.jpg

    found, skipped = _walk(tmp_path)  # would hang forever if the FIFO were opened blocking
    assert list(found) == ["holiday.jpg/china.jpg"]
    assert skipped["stream.jpg"].unsupported
    assert skipped["stream.jpg"].reason == "not a regular file (fifo)"


_UNREADABLE_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys
    from pathlib import Path

    # Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH so that even root obeys file modes (this process only).
    libc = ctypes.CDLL(None, use_errno=True)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        sys.exit(77)
    for half in data:
        half.effective &= ~((1 << 1) | (1 << 2))
    if libc.capset(ctypes.byref(header), data) != 0:
        sys.exit(77)

    from mmrag.errors import ExtractionError
    from mmrag.ingest.discover import discover

    root = Path(sys.argv[1])
    try:
        (root / "secret.jpg").read_bytes()
        sys.exit(77)  # the mode is not enforced here: cannot make an unreadable file
    except PermissionError:
        pass
    entries = [[e.path.name, getattr(e, "reason", "found"), getattr(e, "unsupported", None)]
               for e in discover([root], 1 << 30)]
    try:
        discover([root / "locked"], 1 << 30)
        root_error = None
    except ExtractionError as exc:
        root_error = str(exc)
    print(json.dumps({"entries": entries, "root_error": root_error}))
    """
)


def test_unreadable_files_and_folders_are_reported(tmp_path: Path) -> None:
    """chmod 000 does not stop root, so the walk runs in a child process without the capabilities that let
    root read anything."""
    root = tmp_path / "root"
    photos = write_photos(root, ["astronaut", "chelsea"])
    photos["chelsea"].rename(root / "secret.jpg")
    write_photos(root / "locked", ["coffee"])
    os.chmod(root / "secret.jpg", 0)
    os.chmod(root / "locked", 0)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _UNREADABLE_SCRIPT, str(root)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            timeout=120,
        )
    finally:
        os.chmod(root / "locked", 0o755)
        os.chmod(root / "secret.jpg", 0o644)
    if result.returncode == 77:
        pytest.skip("cannot drop the capability to read any file in this environment")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["entries"] == [
        ["astronaut.jpg", "found", None],
        ["locked", "unreadable folder: Permission denied", False],
        ["secret.jpg", "unreadable: Permission denied", False],
    ]
    assert "locked" in report["root_error"] and "Permission denied" in report["root_error"]


def test_missing_root_fails_at_once_naming_it(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", ["coins"])
    missing = tmp_path / "Photos from 2019"
    with pytest.raises(ExtractionError, match="Photos from 2019"):
        discover([tmp_path / "photos", missing], BIG)  # raised by the call itself, before any walking


def test_single_file_root_and_overlapping_roots(tmp_path: Path) -> None:
    photos = write_photos(tmp_path / "album", ["grace_hopper", "flower"])
    (only,) = discover([photos["flower"]], BIG)
    assert isinstance(only, DiscoveredFile)
    assert only.root == only.path == photos["flower"].resolve()

    entries = list(discover([tmp_path / "album", photos["flower"], tmp_path], BIG))
    assert sorted(entry.path.name for entry in entries) == ["flower.jpg", "grace_hopper.jpg"]
    assert {entry.root for entry in entries} == {(tmp_path / "album").resolve()}


def test_hash_file_streams_the_whole_file(tmp_path: Path) -> None:
    path = write_photos(tmp_path, ["hubble_deep_field"], fmt="bmp")["hubble_deep_field"]
    data = path.read_bytes()
    assert len(data) > 2 * (1 << 20), "precondition: bigger than two read chunks"
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ExtractionError, match="unreadable"):
        hash_file(tmp_path / "gone.bmp")
