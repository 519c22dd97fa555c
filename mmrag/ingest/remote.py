"""Input folders in S3 (s3://bucket/prefix): listed, sniffed and fetched like local files.

The same rules as mmrag.ingest.discover: objects in key order, names starting with "." (at any level below
the prefix) skipped, each object typed by its first bytes (a ranged GET of 8 KiB), empty and oversized ones
reported. An object's document path is its URL; its mtime is S3's LastModified. Objects are read with the
blob store's S3 settings (`blobs.s3`: endpoint, region) and the usual AWS credential chain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from mmrag.blobs import S3Url, iter_s3_objects, s3_client, s3_error
from mmrag.errors import ExtractionError
from mmrag.ingest.discover import (
    _INDEXABLE_SUFFIXES,
    SNIFF_BYTES,
    _format_size,
    _kind_from_head,
    _unsupported_reason,
)
from mmrag.ingest.items import FileKind
from mmrag.settings import IngestSettings, S3Settings

_SNIFF_THREADS = 16  # ranged GETs in flight while listing: a bucket of 100k objects is typed in minutes


def check_s3_root(url: str, settings: S3Settings) -> None:
    """Fail at once, naming the URL, when it holds no object (a typo, a missing bucket, no access)."""
    client = s3_client(settings)
    parsed = _as_root(client, S3Url.parse(url))
    try:
        listed = client.list_objects_v2(Bucket=parsed.bucket, Prefix=parsed.key, MaxKeys=1)
    except Exception as exc:
        raise ExtractionError(str(s3_error(exc, "list", url))) from exc
    if not listed.get("KeyCount"):
        raise ExtractionError(f"no objects under {parsed}")


def discover_s3(url: str, ingest: IngestSettings, settings: S3Settings) -> Iterator[Any]:
    """SourceFile or FileOutcome (skipped: unsupported or failed) for every object under `url`."""
    from mmrag.ingest.plan import FileOutcome, SourceFile

    client = s3_client(settings)
    parsed = _as_root(client, S3Url.parse(url))
    limits = {FileKind.TEXT: ingest.max_text_bytes}
    objects = [obj for obj in iter_s3_objects(client, parsed) if _wanted(obj["Key"], parsed.key)]
    with ThreadPoolExecutor(_SNIFF_THREADS, thread_name_prefix="mmrag-s3-sniff") as pool:
        heads = pool.map(lambda obj: _head(client, parsed.bucket, obj), objects)
        for obj, head in zip(objects, heads, strict=True):
            object_url = f"s3://{parsed.bucket}/{obj['Key']}"
            verdict = _classify(obj, head, ingest.max_file_bytes, limits)
            if isinstance(verdict, tuple):
                status, reason = verdict
                yield FileOutcome(object_url, status, reason=reason)
            else:
                yield SourceFile(
                    path=object_url,
                    source=object_url,
                    kind=verdict,
                    size=int(obj["Size"]),
                    mtime=float(obj["LastModified"].timestamp()),
                )


def _as_root(client: Any, url: S3Url) -> S3Url:
    """s3://b/x is the object x when there is one, else the folder x/ (never the prefix "x", which would also
    take in x2/...)."""
    if not url.key or url.key.endswith("/"):
        return url
    try:
        client.head_object(Bucket=url.bucket, Key=url.key)
        return url
    except Exception:
        return S3Url(url.bucket, url.key + "/")


def _wanted(key: str, prefix: str) -> bool:
    """Not a folder marker, and no hidden name below the prefix."""
    if key.endswith("/"):
        return False
    below = key[len(prefix) :] if key.startswith(prefix) else key
    return not any(part.startswith(".") for part in below.split("/") if part)


def _head(client: Any, bucket: str, obj: Mapping[str, Any]) -> bytes | Exception:
    if not obj["Size"]:
        return b""
    try:
        reply = client.get_object(Bucket=bucket, Key=obj["Key"], Range=f"bytes=0-{SNIFF_BYTES - 1}")
        return bytes(reply["Body"].read())
    except Exception as exc:
        return exc


def _classify(
    obj: Mapping[str, Any], head: bytes | Exception, max_file_bytes: int, limits: Mapping[FileKind, int]
) -> FileKind | tuple[str, str]:
    suffix = PurePosixPath(obj["Key"]).suffix.lower()
    size = int(obj["Size"])
    if isinstance(head, Exception):
        return "failed", f"unreadable: {s3_error(head, 'read', obj['Key'])}"
    if size == 0:
        return ("unsupported" if suffix not in _INDEXABLE_SUFFIXES else "failed"), "empty file"
    kind = _kind_from_head(head, suffix)
    if kind is None:
        return "unsupported", _unsupported_reason(head, suffix)
    if size > max_file_bytes:
        return "failed", f"larger than the {_format_size(max_file_bytes)} limit ({_format_size(size)})"
    limit = limits.get(kind)
    if limit is not None and size > limit:
        return "failed", (
            f"larger than the {_format_size(limit)} limit for {kind.value} files "
            f"(ingest.max_{kind.value}_bytes; this one is {_format_size(size)})"
        )
    return kind


def download(url: str, target: Path, settings: S3Settings) -> None:
    """Fetch an object to a local file (streamed)."""
    parsed = S3Url.parse(url)
    try:
        s3_client(settings).download_file(parsed.bucket, parsed.key, str(target))
    except Exception as exc:
        raise ExtractionError(f"unreadable: {s3_error(exc, 'read', url)}") from exc
