"""Files the service reads back from disk to serve them (an item's original, its thumbnail).

A file is served only from under the data dir or one of api.allowed_roots, and no symlink below that root
is followed: every folder on the way and the file itself are opened with O_NOFOLLOW, each relative to the
folder opened before it, so a link swapped in anywhere on the path, even between two checks, fails the open.
An original must also still be the file that was indexed: same size and mtime as recorded, or, when those
differ, the same sha256. A file replaced since is refused, never served.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mmrag.store.models import Document

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_ROOT_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_FOLDER_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO swapped in for the file must not hang the request
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
CHUNK_BYTES = 1 << 20


class FileRefused(Exception):
    """The file is not served; `status` is 404 (gone, a link, outside the roots) or 409 (changed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def open_within(path: Path | str, roots: Sequence[Path]) -> BinaryIO:
    """The regular file `path`, open for reading, when it lies under one of `roots` (resolved folders)
    without a symlink on the way; FileRefused otherwise."""
    absolute = Path(os.path.normpath(path))
    root = next((r for r in roots if absolute.is_absolute() and absolute.is_relative_to(r)), None)
    if root is None:
        raise FileRefused(404, "is outside the data dir and api.allowed_roots, where files are served from")
    parts = absolute.relative_to(root).parts
    if not parts:
        raise FileRefused(404, "is not a file")
    try:
        folder = os.open(root, _ROOT_FLAGS)
    except OSError as exc:
        raise FileRefused(404, _reason(exc)) from None
    try:
        for part in parts[:-1]:
            inner = os.open(part, _FOLDER_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=folder)
    except OSError as exc:
        raise FileRefused(404, _reason(exc)) from None
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(404, "is not a regular file now")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_indexed(doc: Document, roots: Sequence[Path]) -> BinaryIO:
    """The document's file, open for reading, when it is still the file that was indexed."""
    file = open_within(doc.fs_path, roots)  # the file system's own bytes for a name that is not UTF-8
    try:
        info = os.fstat(file.fileno())
        if info.st_size == doc.size and info.st_mtime == doc.mtime:
            return file
        if info.st_size != doc.size or sha256_of(file) != doc.content_hash:
            raise FileRefused(409, "has changed since it was indexed: index it again to serve it")
        file.seek(0)  # touched, not changed
        return file
    except BaseException:
        file.close()
        raise


def sha256_of(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def chunks(file: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, a chunk at a time; closes it at the end (or when the response is abandoned)."""
    with file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link now, or lies behind one (links are not followed)"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "is gone"
    return f"cannot be read ({exc.strerror or exc})"
