"""Walk the folders a user gives, decide what each file is by its content, and say why the rest is skipped.

Rules that keep an index predictable and safe:
- sorted, depth-first order, so two runs over the same tree see files in the same order;
- symlinks are never followed (a link can point anywhere, including back up the tree), and no path that
  resolves outside its root is ever yielded;
- hidden entries (".git", ".DS_Store") are skipped without a word;
- a file is typed by its first bytes, not its name: a ".jpg" that is really a PDF is indexed as a PDF;
- skips come in two kinds: `unsupported` (not something we index: counted quietly) and failures (empty,
  too large, unreadable: reported to the user).
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmrag.errors import ExtractionError
from mmrag.ingest.items import FileKind

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".text"})
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"}
)
PDF_SUFFIXES = frozenset({".pdf"})
_INDEXABLE_SUFFIXES = TEXT_SUFFIXES | IMAGE_SUFFIXES | PDF_SUFFIXES

SNIFF_BYTES = 8192
_PDF_MAGIC_WINDOW = 1024  # Acrobat accepts '%PDF-' anywhere in the first KiB (junk before it is common)
_HASH_CHUNK = 1 << 20

# Sizes a BMP info header can have (BITMAPCOREHEADER ... BITMAPV5HEADER); "BM" alone is too weak a magic:
# plenty of text starts with those two letters.
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# O_NONBLOCK: opening a FIFO that slipped past the regular-file check must not hang the walk.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class DiscoveredFile:
    path: Path  # absolute, resolved, guaranteed inside `root`
    root: Path  # the folder the user gave (resolved); a file given directly is its own root
    kind: FileKind
    size: int
    mtime: float


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str  # e.g. "symlink outside /x", "unreadable: Permission denied", "larger than the 512 MiB limit"
    unsupported: bool  # True = just not a file type we index (quietly counted); False = a failure to report


def printable_path(path: Path | str) -> str:
    """The path as text that any database, terminal or JSON can hold. The file system gives names as bytes
    (Python decodes the ones that are not UTF-8 with surrogate escapes); those bytes are shown as \\xNN."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def path_bytes_if_escaped(path: Path | str) -> bytes | None:
    """The file system's bytes of a path whose printable form had to escape some; None for UTF-8 names."""
    raw = os.fsencode(path)
    return None if printable_path(path) == os.fsdecode(raw) else raw


def discover(
    roots: Sequence[Path], max_file_bytes: int, kind_limits: Mapping[FileKind, int] | None = None
) -> Iterator[DiscoveredFile | SkippedFile]:
    """Yield every file under `roots` (folders or single files) as discovered or skipped, in sorted order.
    A file larger than `max_file_bytes`, or than its kind's limit in `kind_limits`, is skipped as failed.

    Every root is checked before the walk starts, so a typo fails at once with ExtractionError rather than
    after an hour of indexing the other roots. A file reachable from two overlapping roots is yielded once,
    under the first root.
    """
    if max_file_bytes < 1:
        raise ValueError(f"max_file_bytes must be positive, got {max_file_bytes}")
    resolved_roots = [check_root(Path(root)) for root in roots]
    return _walk_roots(resolved_roots, max_file_bytes, dict(kind_limits or {}))


def sniff_kind(path: Path) -> FileKind | None:
    """The kind of file by its first bytes (and, for text, its extension); None when we do not index it."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise ExtractionError(f"unreadable: {path}: {_os_reason(exc)}") from exc
    with os.fdopen(fd, "rb") as file:
        try:
            head = file.read(SNIFF_BYTES)
        except OSError as exc:
            raise ExtractionError(f"unreadable: {path}: {_os_reason(exc)}") from exc
    return _kind_from_head(head, path.suffix.lower())


def hash_file(path: Path) -> str:
    """sha256 hex digest of the file's bytes, read in 1 MiB chunks so large files do not fill memory."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ExtractionError(f"unreadable: {path}: {_os_reason(exc)}") from exc
    return digest.hexdigest()


def _kind_from_head(head: bytes, suffix: str) -> FileKind | None:
    if _looks_like_image(head):
        return FileKind.IMAGE
    if b"%PDF-" in head[:_PDF_MAGIC_WINDOW]:
        return FileKind.PDF
    if suffix in TEXT_SUFFIXES and _is_utf8_text(head):
        return FileKind.TEXT
    return None


def _looks_like_image(head: bytes) -> bool:
    if head.startswith(b"\xff\xd8\xff"):  # JPEG SOI + first marker
        return True
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return True
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return True
    return (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES
    )


def _is_utf8_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    # final=False: the 8 KiB cut may split a multibyte character; that is not an encoding error.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return _is_legacy_text(head)
    return True


# Control bytes that text holds: tab, line feed, vertical tab, form feed, carriage return, escape.
_TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r\x1b")


def _is_legacy_text(head: bytes) -> bool:
    """Text in a single-byte encoding (latin-1, cp1252: older notes and exports) rather than binary data:
    no NUL and almost no control bytes. mmrag.ingest.text decodes it as latin-1."""
    controls = sum(1 for byte in head if (byte < 0x20 or byte == 0x7F) and byte not in _TEXT_CONTROLS)
    return controls <= len(head) // 100


def check_root(root: Path) -> Path:
    """`root` resolved (~ expanded), or an ExtractionError naming why it cannot be walked."""
    try:
        resolved = root.expanduser().resolve(strict=True)
        info = resolved.stat()
    except FileNotFoundError as exc:
        raise ExtractionError(f"folder or file not found: {root}") from exc
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop while resolving
        raise ExtractionError(f"cannot open {root}: {_os_reason(exc)}") from exc
    if stat.S_ISDIR(info.st_mode):
        try:
            with os.scandir(resolved):
                pass
        except OSError as exc:
            raise ExtractionError(f"folder not readable: {root}: {_os_reason(exc)}") from exc
    elif stat.S_ISREG(info.st_mode):
        try:
            os.close(os.open(resolved, _OPEN_FLAGS))
        except OSError as exc:
            raise ExtractionError(f"file not readable: {root}: {_os_reason(exc)}") from exc
    else:
        raise ExtractionError(f"not a folder or a regular file: {root}")
    return resolved


def _walk_roots(
    roots: list[Path], max_file_bytes: int, kind_limits: dict[FileKind, int]
) -> Iterator[DiscoveredFile | SkippedFile]:
    seen: set[Path] = set()
    for root in roots:
        entries = _walk_folder(root) if root.is_dir() else iter([root])
        for path in entries:
            if path in seen:
                continue
            seen.add(path)
            yield _classify(path, root, max_file_bytes, kind_limits)


def _walk_folder(root: Path) -> Iterator[Path | SkippedFile]:
    """Paths of non-hidden entries that are not folders, depth-first in name order; unreadable folders
    come back as SkippedFile. An explicit stack, so a very deep tree cannot exhaust Python's recursion."""
    stack: list[Iterator[os.DirEntry[str]]] = []
    listing = _sorted_listing(root)
    if isinstance(listing, SkippedFile):
        yield listing
        return
    stack.append(iter(listing))
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_folder = False  # let _classify's lstat report the problem
        if not is_folder:
            yield path
            continue
        listing = _sorted_listing(path)
        if isinstance(listing, SkippedFile):
            yield listing
        else:
            stack.append(iter(listing))


def _sorted_listing(folder: Path) -> list[os.DirEntry[str]] | SkippedFile:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        return SkippedFile(folder, f"unreadable folder: {_os_reason(exc)}", unsupported=False)


def _classify(
    path: Path | SkippedFile, root: Path, max_file_bytes: int, kind_limits: dict[FileKind, int]
) -> DiscoveredFile | SkippedFile:
    if isinstance(path, SkippedFile):
        return path
    try:
        info = path.lstat()
    except OSError as exc:
        return SkippedFile(path, f"unreadable: {_os_reason(exc)}", unsupported=False)
    if stat.S_ISLNK(info.st_mode):
        return SkippedFile(path, _symlink_reason(path, root), unsupported=True)
    if not _is_inside(path, root):
        # Cannot happen with scandir names, but a folder swapped for a link mid-walk must not leak out.
        return SkippedFile(path, f"resolves outside {root}", unsupported=False)
    if not stat.S_ISREG(info.st_mode):
        return SkippedFile(path, f"not a regular file ({_file_type_name(info.st_mode)})", unsupported=True)
    suffix = path.suffix.lower()
    if info.st_size == 0:
        # An empty photo or PDF is a broken file worth reporting; an empty __init__.py is not our business.
        return SkippedFile(path, "empty file", unsupported=suffix not in _INDEXABLE_SUFFIXES)
    try:
        head, info = _read_head(path)
    except OSError as exc:
        return SkippedFile(path, f"unreadable: {_os_reason(exc)}", unsupported=False)
    if head is None:  # became a link or a special file since the listing
        return SkippedFile(path, "not a regular file", unsupported=True)
    kind = _kind_from_head(head, suffix)
    if kind is None:
        return SkippedFile(path, _unsupported_reason(head, suffix), unsupported=True)
    if info.st_size > max_file_bytes:
        return SkippedFile(
            path,
            f"larger than the {_format_size(max_file_bytes)} limit ({_format_size(info.st_size)})",
            unsupported=False,
        )
    kind_limit = kind_limits.get(kind)
    if kind_limit is not None and info.st_size > kind_limit:
        return SkippedFile(
            path,
            f"larger than the {_format_size(kind_limit)} limit for {kind.value} files "
            f"(ingest.max_{kind.value}_bytes; this one is {_format_size(info.st_size)})",
            unsupported=False,
        )
    return DiscoveredFile(path=path, root=root, kind=kind, size=info.st_size, mtime=info.st_mtime)


def _read_head(path: Path) -> tuple[bytes | None, os.stat_result]:
    """First bytes and the stat of the very file read (O_NOFOLLOW: a link swapped in after lstat fails)."""
    fd = os.open(path, _OPEN_FLAGS | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, info
        return file.read(SNIFF_BYTES), info


def _symlink_reason(path: Path, root: Path) -> str:
    try:
        target = path.resolve(strict=False)
    except (OSError, RuntimeError):
        return "symlink"
    return "symlink" if _is_inside(target, root) else f"symlink outside {root}"


def _is_inside(path: Path, root: Path) -> bool:
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError):
        return False
    return resolved == root or resolved.is_relative_to(root)


def _unsupported_reason(head: bytes, suffix: str) -> str:
    if suffix in _INDEXABLE_SUFFIXES:
        looks = "text" if _is_utf8_text(head) else "binary data"
        return f"not a recognised image/PDF/text file ({suffix} file whose content is {looks})"
    return f"unsupported file type ({suffix or 'no extension'})"


def _file_type_name(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or os.strerror(exc.errno or errno.EIO)
    return str(exc)
