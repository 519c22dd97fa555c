"""Files that are not in the database (thumbnails, uploaded files), in one store every process can reach.

`blobs.url` picks it: "" = the data dir, a folder (local disk, or a share every machine mounts), or
s3://bucket/prefix on any S3-compatible service (AWS S3, MinIO, Ceph; `blobs.s3.*` says where, the usual
AWS chain gives the credentials). Keys are relative slash-separated names ("thumbnails/ab/<sha256>.webp",
"uploads/<collection>/<sha256>/<name>"); a key is what the database stores, so the same row reads the same
bytes on every machine. On a folder a key is that relative path, so a data dir written before the store
existed reads as it did.

Ray workers and API replicas build their own store from the same settings (`open_blob_store`): a store is
cheap to make and holds no state beyond its client.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mmrag.errors import ConfigError, MmragError
from mmrag.settings import BlobSettings, S3Settings, Settings


class BlobError(MmragError):
    """The blob store cannot be reached, or refused an operation."""


class BlobNotFound(BlobError):
    pass


def check_key(key: str) -> str:
    """A key is a relative path of plain components: it can never leave the store's root."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid blob key {key!r}: a relative path of plain names separated by '/'")
    return key


class BlobStore(Protocol):
    description: str  # where the blobs live, for messages

    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, source: Path, move: bool = False) -> None:
        """Copy a local file in (streamed: an upload may be large); `move`: the source goes."""

    def get(self, key: str) -> bytes:
        """The blob's bytes; BlobNotFound when there is none."""

    def exists(self, key: str) -> bool: ...
    def ensure(self, key: str, make: Callable[[], bytes]) -> None:
        """Write `make()` under `key` unless the store can tell cheaply that it is there (content-addressed
        keys: what is there is what would be written)."""

    def delete(self, key: str) -> None:
        """Remove the blob (nothing happens when there is none)."""

    def location(self, key: str) -> str:
        """What names the blob for the ingest stages: a local path, or an s3:// URL."""


class FolderBlobStore:
    """Blobs as files under a folder; each write lands whole (temporary file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, source: Path, move: bool = False) -> None:
        target = self.path(key)
        if source.resolve() == target.resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(source, target)  # same file system: a rename
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(source, "rb") as reader, open(tmp, "wb") as writer:
                while chunk := reader.read(1 << 20):
                    writer.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        if move:
            source.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key} in {self.description}") from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {key} in {self.description}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def ensure(self, key: str, make: Callable[[], bytes]) -> None:
        if not self.exists(key):
            self.put(key, make())

    def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # its folder goes with its last blob (not the store's root)
            if path.parent != self.root:
                path.parent.rmdir()

    def location(self, key: str) -> str:
        return str(self.path(key))


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # "" for the bucket's root; a "folder" ends in "/"

    @classmethod
    def parse(cls, url: str) -> S3Url:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, key = url[5:].partition("/")
        if not bucket:
            raise ValueError(f"{url!r} names no bucket: s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


_clients: dict[tuple[str | None, str | None, str], Any] = {}
_clients_lock = threading.Lock()


def s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for the configured service (mmrag[s3]), one per process and service: boto3's
    clients are thread-safe, and making one costs tens of milliseconds."""
    key = (settings.endpoint_url, settings.region, settings.addressing_style)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_s3_client(settings)
        return _clients[key]


def _new_s3_client(settings: S3Settings) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(f"S3 storage needs boto3: pip install 'mmrag[s3]' ({exc})") from exc
    config = Config(
        s3={"addressing_style": settings.addressing_style},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region or "us-east-1", config=config
    )


def s3_error(exc: Exception, what: str, where: str) -> BlobError:
    """One line that names the operation, the place and the service's reason."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    reason = f"{code}: {exc}" if code else f"{type(exc).__name__}: {exc}"
    if code in ("404", "NoSuchKey", "NotFound"):
        return BlobNotFound(f"cannot {what} {where}: not found")
    return BlobError(f"cannot {what} {where}: {reason}")


class S3BlobStore:
    """Blobs as objects under s3://bucket/prefix/ (a put is atomic in S3: readers see all of it or none)."""

    def __init__(self, url: str, settings: S3Settings) -> None:
        parsed = S3Url.parse(url)
        self.bucket = parsed.bucket
        self.prefix = parsed.key.strip("/") + "/" if parsed.key.strip("/") else ""
        self.settings = settings
        self.description = f"s3://{self.bucket}/{self.prefix}"

    @property
    def client(self) -> Any:
        return s3_client(self.settings)

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        except Exception as exc:
            raise s3_error(exc, "write", self.location(key)) from exc

    def put_file(self, key: str, source: Path, move: bool = False) -> None:
        try:
            self.client.upload_file(str(source), self.bucket, self.object_key(key))
        except Exception as exc:
            raise s3_error(exc, "upload to", self.location(key)) from exc
        if move:
            source.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read())
        except Exception as exc:
            raise s3_error(exc, "read", self.location(key)) from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            error = s3_error(exc, "look up", self.location(key))
            if isinstance(error, BlobNotFound):
                return False
            raise error from exc
        return True

    def ensure(self, key: str, make: Callable[[], bytes]) -> None:
        self.put(key, make())  # one PUT costs what a HEAD before it would

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise s3_error(exc, "delete", self.location(key)) from exc

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"


def open_blob_store(settings: Settings) -> BlobStore:
    return blob_store_for(settings.blobs, settings.data_dir)


def blob_store_for(blobs: BlobSettings, data_dir: Path) -> BlobStore:
    if blobs.url.startswith("s3://"):
        return S3BlobStore(blobs.url, blobs.s3)
    return FolderBlobStore(Path(blobs.url).expanduser() if blobs.url else data_dir)


def key_of_location(store: BlobStore, location: str) -> str | None:
    """The key of a blob named by its location (a document path), or None when it is not in `store`."""
    if isinstance(store, S3BlobStore):
        head = f"s3://{store.bucket}/{store.prefix}"
        return location[len(head) :] if location.startswith(head) else None
    if isinstance(store, FolderBlobStore):
        root = str(store.root.resolve()) + os.sep
        resolved = str(Path(location).resolve()) if not is_s3_url(location) else ""
        return resolved[len(root) :].replace(os.sep, "/") if resolved.startswith(root) else None
    return None


def thumbnail_key(content_hash: str, extension: str) -> str:
    return f"thumbnails/{content_hash[:2]}/{content_hash}.{extension}"


def upload_key(collection: str, sha256: str, name: str) -> str:
    return f"uploads/{collection}/{sha256}/{name}"


def iter_s3_objects(client: Any, url: S3Url) -> Iterator[dict[str, Any]]:
    """Every object under an s3:// prefix, in key order (S3 lists in UTF-8 binary order)."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=url.bucket, Prefix=url.key):
        yield from page.get("Contents", [])


def read_s3_object(url: str, settings: Settings) -> bytes:
    """The bytes of any object the deployment's S3 service holds (an s3:// input folder's file)."""
    parsed = S3Url.parse(url)
    try:
        reply = s3_client(settings.blobs.s3).get_object(Bucket=parsed.bucket, Key=parsed.key)
        return bytes(reply["Body"].read())
    except Exception as exc:
        raise s3_error(exc, "read", url) from exc
