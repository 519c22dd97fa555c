"""The blob store (thumbnails, uploads): one behaviour on a folder and on S3 (a real moto server process)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mmrag.blobs import (
    BlobError,
    BlobNotFound,
    BlobStore,
    FolderBlobStore,
    S3BlobStore,
    blob_store_for,
    check_key,
    key_of_location,
)
from mmrag.errors import ConfigError
from mmrag.settings import BlobSettings, S3Settings, load_settings
from tests.s3_server import S3Server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.make_bucket("media")
        yield server


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "folder":
        return FolderBlobStore(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3")
    return S3BlobStore(f"s3://media/{tmp_path.name}/", S3Settings(**server.settings()))


def test_put_get_exists_delete(store: BlobStore, tmp_path: Path) -> None:
    key = "thumbnails/ab/abcdef.webp"
    assert not store.exists(key)
    with pytest.raises(BlobNotFound, match="abcdef"):
        store.get(key)
    store.put(key, b"first")
    store.put(key, b"second")  # a write replaces the blob whole
    assert store.exists(key) and store.get(key) == b"second"
    big = tmp_path / "upload.bin"
    big.write_bytes(bytes(range(256)) * 8192)  # 2 MiB, streamed
    store.put_file("uploads/c/0123/upload.bin", big)
    assert store.get("uploads/c/0123/upload.bin") == big.read_bytes()
    store.delete(key)
    store.delete(key)  # deleting what is gone is no error
    assert not store.exists(key)


def test_ensure_writes_what_is_missing_only_once_on_a_folder(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    calls: list[int] = []
    for _ in range(3):
        store.ensure("thumbnails/aa/x.webp", lambda: calls.append(1) or b"pixels")  # type: ignore[func-returns-value]
    assert store.get("thumbnails/aa/x.webp") == b"pixels" and len(calls) == 1


def test_location_names_the_blob_for_the_ingest_stages(store: BlobStore) -> None:
    key = "uploads/default/0123/cat.jpg"
    location = store.location(key)
    assert key_of_location(store, location) == key
    if isinstance(store, S3BlobStore):
        assert location.startswith("s3://media/")
    else:
        assert Path(location).is_absolute()
    assert key_of_location(store, "/somewhere/else/cat.jpg") is None


@pytest.mark.parametrize("key", ["", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "a/"])
def test_keys_never_leave_the_store(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        check_key(key)
    with pytest.raises(ValueError):
        FolderBlobStore(tmp_path).put(key, b"x")


def test_a_missing_bucket_is_named_in_the_error(s3: S3Server) -> None:
    store = S3BlobStore("s3://no-such-bucket/x", S3Settings(**s3.settings()))
    with pytest.raises(BlobError, match=r"s3://no-such-bucket/x/thumbnails/k.*NoSuchBucket"):
        store.put("thumbnails/k", b"x")


def test_the_store_follows_the_settings(tmp_path: Path) -> None:
    assert isinstance(blob_store_for(BlobSettings(), tmp_path), FolderBlobStore)
    assert blob_store_for(BlobSettings(url=str(tmp_path / "shared")), tmp_path).description.endswith("shared")
    s3_store = blob_store_for(BlobSettings(url="s3://bucket/pre/fix"), tmp_path)
    assert isinstance(s3_store, S3BlobStore) and s3_store.location("a") == "s3://bucket/pre/fix/a"
    with pytest.raises(ConfigError, match=r"blobs\.url"):
        load_settings(blobs={"url": "http://minio:9000/bucket"})
    with pytest.raises(ConfigError, match="names no bucket"):
        load_settings(blobs={"url": "s3:///prefix"})
