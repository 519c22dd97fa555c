"""Multipart uploads parsed as they stream in: each file goes straight to disk, hashed on the way.

Starlette's form parser would spool every part to the system temp dir first and leave hashing, naming and
counting for later; here the part count, the form fields and the names are checked as the parts arrive,
and each file is written once, under the service's own data dir. The byte limit is BodySizeLimit's.

The client's filename is never used as a path: it is reduced to one safe component (no separators, no
leading dot, no control characters) and the file lands in uploads/<collection>/<sha256>/<name>.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from mmrag.blobs import BlobStore, upload_key

MAX_NAME_CHARS = 120
# A request's folder under uploads/.incoming that nothing has written to for this long was left by a server
# that stopped mid-upload. Another server on the same data dir writes to its folders as the bytes arrive,
# so this is far longer than any pause in a live upload.
STALE_INCOMING_S = 30 * 60


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class ReceivedFile:
    client_name: str  # as sent, for reports only
    name: str  # safe_filename(client_name)
    path: Path  # where it was written
    size: int = 0
    sha256: str = ""


@dataclass
class ReceivedForm:
    files: list[ReceivedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def safe_filename(client_name: str | None, fallback: str = "upload") -> str:
    """One harmless path component that keeps the name's look and its suffix (text files are typed by it)."""
    base = re.split(r"[\\/]", client_name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(c if (c.isalnum() or c in "._- ") else "_" for c in base)
    base = base.strip(" ").lstrip(".")  # a leading dot would hide the file from the walk (and allow "..")
    if not base or set(base) <= {".", "_", " ", "-"}:
        base = fallback + (Path(base).suffix if base else "")
    if len(base) > MAX_NAME_CHARS:
        stem, suffix = os.path.splitext(base)
        suffix = suffix[:16]
        base = stem[: MAX_NAME_CHARS - len(suffix)] + suffix
    return base


@dataclass
class _Part:
    name: str = ""
    file: ReceivedFile | None = None
    handle: IO[bytes] | None = None
    hasher: Any = None
    text: bytearray = field(default_factory=bytearray)


class _MultipartReceiver:
    def __init__(
        self, incoming: Path, file_field: str, text_fields: set[str], max_files: int, max_field_bytes: int
    ) -> None:
        self.incoming = incoming
        self.file_field = file_field
        self.text_fields = text_fields
        self.max_files = max_files
        self.max_field_bytes = max_field_bytes
        self.form = ReceivedForm()
        self.part = _Part()
        self.headers: dict[bytes, bytes] = {}
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.disk_ops: list[Callable[[], None]] = []  # run off the event loop after each network chunk
        self.file_parts: list[_Part] = []

    # python-multipart callbacks; an UploadError raised here propagates out of parser.write

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self.part.name = name
        if b"filename" not in options:
            if name not in self.text_fields:
                allowed = ", ".join(sorted({self.file_field, *self.text_fields}))
                raise UploadError(
                    422, "unknown_field", f"unknown form field {name!r}; the fields are: {allowed}"
                )
            return
        if name != self.file_field:
            raise UploadError(
                422, "unknown_field", f"files go in the form field {self.file_field!r}, not {name!r}"
            )
        if len(self.form.files) >= self.max_files:
            raise UploadError(
                413,
                "too_many_files",
                f"more than {self.max_files} files in one request (api.max_files_per_request)",
            )
        client_name = options[b"filename"].decode("utf-8", "replace")
        number = len(self.form.files)
        received = ReceivedFile(client_name, safe_filename(client_name), Path())
        received.path = self.incoming / str(number) / received.name
        self.form.files.append(received)
        self.part.file = received
        self.part.hasher = hashlib.sha256()
        part = self.part
        self.file_parts.append(part)

        def open_file() -> None:
            received.path.parent.mkdir(parents=True, exist_ok=True)
            part.handle = open(received.path, "wb")  # noqa: SIM115 - closed by the part's end op

        self.disk_ops.append(open_file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = bytes(data[start:end])  # the parser reuses its buffer
        part = self.part
        if part.file is None:
            part.text += chunk
            if len(part.text) > self.max_field_bytes:
                raise UploadError(
                    413, "field_too_large", f"form field {part.name!r} is over {self.max_field_bytes} bytes"
                )
            return
        part.hasher.update(chunk)
        part.file.size += len(chunk)
        self.disk_ops.append(lambda: part.handle.write(chunk))  # type: ignore[union-attr]

    def on_part_end(self) -> None:
        part = self.part
        if part.file is None:
            try:
                self.form.fields[part.name] = part.text.decode("utf-8")
            except UnicodeDecodeError:
                raise UploadError(
                    422, "invalid_field", f"form field {part.name!r} is not UTF-8 text"
                ) from None
            return
        part.file.sha256 = part.hasher.hexdigest()
        self.disk_ops.append(lambda: part.handle.close())  # type: ignore[union-attr]

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def run_disk_ops(self) -> None:
        ops, self.disk_ops = self.disk_ops, []
        for op in ops:
            op()

    def close_all(self) -> None:
        """On error: queued writes are dropped, open files closed; the caller removes the files."""
        for part in self.file_parts:
            if part.handle is not None and not part.handle.closed:
                part.handle.close()


async def receive_multipart(
    request: Request,
    incoming: Path,
    *,
    file_field: str,
    text_fields: set[str],
    max_files: int,
    max_field_bytes: int = 64 * 1024,
) -> ReceivedForm:
    """Parse the request body into files under `incoming` and small text fields. Raises UploadError (the
    caller removes `incoming`), or starlette's ClientDisconnect when the body stops (BodySizeLimit)."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise UploadError(
            415,
            "unsupported_media_type",
            f"send files as multipart/form-data (field {file_field!r}), "
            f"not {content_type.decode() or 'no content type'}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "invalid_multipart", "multipart/form-data without a boundary parameter")
    receiver = _MultipartReceiver(incoming, file_field, text_fields, max_files, max_field_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise UploadError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
            if receiver.disk_ops:
                await asyncio.to_thread(receiver.run_disk_ops)
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise UploadError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
        await asyncio.to_thread(receiver.run_disk_ops)
    finally:
        receiver.close_all()
    if any(not f.sha256 for f in receiver.form.files):
        raise UploadError(400, "invalid_multipart", "the multipart body ended in the middle of a file")
    return receiver.form


def store_upload(received: ReceivedFile, blobs: BlobStore, collection: str) -> str:
    """Move a received file into the blob store as uploads/<collection>/<sha256>/<name>; the same bytes
    under the same name land in the same place, so uploading a file twice indexes it once. Returns its
    location (what the ingest job reads: a path, or an s3:// URL every replica reaches)."""
    key = upload_key(collection, received.sha256, received.name)
    if blobs.exists(key):
        received.path.unlink(missing_ok=True)
    else:
        blobs.put_file(key, received.path, move=True)
    return blobs.location(key)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def remove_stale_incoming(incoming_root: Path, older_than_s: float) -> int:
    """Remove the request folders under `incoming_root` in which nothing changed for `older_than_s` seconds;
    the number removed. What cannot be removed stays (the service starts anyway)."""
    try:
        entries = list(os.scandir(incoming_root))
    except OSError:  # none yet, or unreadable
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in entries:
        if _newest_mtime(Path(entry.path)) >= cutoff:
            continue
        if entry.is_dir(follow_symlinks=False):
            remove_tree(Path(entry.path))
        else:
            with contextlib.suppress(OSError):
                Path(entry.path).unlink()
        removed += not os.path.lexists(entry.path)
    return removed


def _newest_mtime(path: Path) -> float:
    """The latest mtime of `path` and everything under it (links are not followed)."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return float("inf")  # gone already, or not ours to judge: left alone
    if path.is_dir() and not path.is_symlink():
        for parent, folders, files in os.walk(path):
            for name in folders + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
                except OSError:
                    continue
    return newest
