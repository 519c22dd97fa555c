"""The ingest stages and the local runner (tiny CLIP): extraction runs ahead of the models on its own
threads, files in S3 are indexed like local ones, thumbnails go to the blob store."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mmrag.blobs import FolderBlobStore
from mmrag.errors import ConfigError
from mmrag.ingest import plan, stages
from mmrag.ingest.items import FileKind
from mmrag.ingest.pipeline import Indexer
from mmrag.ingest.plan import FileTask, SourceFile
from mmrag.ingest.runners import local, make_runner
from mmrag.ingest.stages import FileExtracted, extract
from mmrag.ingest.vectorise import PendingItem, Vectoriser
from mmrag.runtime import open_runtime
from mmrag.settings import Settings, load_settings
from mmrag.store.models import Document
from tests.realdata import photo_bytes, photo_image, write_photos
from tests.s3_server import S3Server, s3_server


def test_extract_needs_no_database_and_ends_every_file(tmp_path: Path, tiny_settings: Settings) -> None:
    """extract takes a task, settings and a blob store: nothing else, so it runs on any thread or machine."""
    photos = write_photos(tmp_path / "lib", ["chelsea"])
    (tmp_path / "lib" / "broken.jpg").write_bytes(photo_bytes("coffee")[:2000])
    blobs = FolderBlobStore(tmp_path / "blobs")

    def task(path: Path) -> FileTask:
        return FileTask(SourceFile(str(path), str(path), FileKind.IMAGE, path.stat().st_size, 0.0))

    *items, end = extract(task(photos["chelsea"]), tiny_settings, blobs)
    assert isinstance(end, FileExtracted) and end.error is None and len(end.content_hash) == 64
    (item,) = items
    assert isinstance(item, PendingItem) and item.thumbnail is not None
    assert blobs.exists(item.thumbnail) and max(item.extracted.image.size) <= 1024  # type: ignore[union-attr]
    (failed,) = extract(task(tmp_path / "lib" / "broken.jpg"), tiny_settings, blobs)
    assert isinstance(failed, FileExtracted) and "truncated" in (failed.error or "")
    same = FileTask(task(photos["chelsea"]).file, previous_hash=end.content_hash, previous_id=1)
    assert list(extract(same, tiny_settings, blobs)) == [FileExtracted(end.content_hash, unchanged=True)]


def test_plan_looks_walked_files_up_in_batches_and_keeps_the_walk_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run over a large unchanged library costs a walk and a query per 500 files, not one per file;
    unchanged, changed, new and skipped files come out as they did one lookup at a time, in walk order."""
    library = tmp_path / "lib"
    for i in range(1100):
        folder = library / f"d{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{i:04d}.txt").write_text(f"note {i}\n")
        if i % 250 == 0:  # skipped files between the others
            (folder / f"n{i:04d}.empty.txt").write_bytes(b"")
            (folder / f"n{i:04d}.xyz").write_text("not a kind mmrag reads")
    settings = load_settings(None, data_dir=tmp_path / "data")
    asked: list[int] = []

    def existing(paths: Sequence[str]) -> dict[str, Document]:
        asked.append(len(paths))
        docs = {}
        for path in paths:
            number = int(Path(path).stem[1:])
            if number % 3 == 2:  # never indexed
                continue
            stat = Path(path).stat()
            mtime = stat.st_mtime if number % 3 == 0 else stat.st_mtime - 60  # 1: touched since
            docs[path] = Document(
                id=number + 1, path=path, status="indexed", size=stat.st_size, mtime=mtime, content_hash="h"
            )
        return docs

    def summary(entries: Sequence[FileTask | plan.FileOutcome]) -> list[tuple[str, str, int | None]]:
        return [
            (e.file.path, "task", e.previous_id) if isinstance(e, FileTask) else (e.path, e.status, None)
            for e in entries
        ]

    batched = summary(list(plan.plan([library], settings, existing)))
    assert len(asked) == 3 and sum(asked) == 1100  # batches of 500 walked entries, skipped ones included
    monkeypatch.setattr(plan, "_PLAN_BATCH", 1)
    one_by_one = summary(list(plan.plan([library], settings, existing)))
    assert batched == one_by_one and len(batched) == 1100 + 10
    kinds = {
        name: [row for row in batched if row[1] == name] for name in ("unchanged", "task", "unsupported")
    }
    assert len(kinds["unchanged"]) == 367 and len(kinds["task"]) == 733 and len(kinds["unsupported"]) == 5
    assert sum(1 for _, _, previous in kinds["task"] if previous is not None) == 367  # touched: hashed again
    assert [row[1] for row in batched].count("failed") == 5  # the empty files


def test_files_are_extracted_while_the_model_works(
    tmp_path: Path, tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's model call waits until the next file's item has been extracted: that can only
    happen when extraction runs beside the model, never when the stages alternate."""
    write_photos(tmp_path / "lib", ["chelsea", "coffee", "rocket"])
    settings = tiny_settings.model_copy(
        update={"models": tiny_settings.models.model_copy(update={"batch_size": 1})}
    )
    extracted: list[str] = []
    second_file_ready = threading.Event()

    def watched_extract(task: FileTask, *args: object) -> Iterator[object]:
        for event in extract(task, *args):  # type: ignore[arg-type]
            if isinstance(event, PendingItem):
                extracted.append(Path(task.file.path).name)
                if len(set(extracted)) >= 2:
                    second_file_ready.set()
            yield event

    monkeypatch.setattr(local, "extract", watched_extract)
    runtime = open_runtime(settings)

    class WaitingVectoriser(Vectoriser):
        waited: bool | None = None

        def run(self, items: list[PendingItem]) -> None:  # type: ignore[override]
            if WaitingVectoriser.waited is None:  # the first model call
                WaitingVectoriser.waited = second_file_ready.wait(timeout=120)
            super().run(items)

    base = runtime.vectoriser()
    vectoriser = WaitingVectoriser(None, "clip", clip=base.clip)
    try:
        report = Indexer(settings, runtime.collection, vectoriser).run([tmp_path / "lib"])
    finally:
        runtime.close()
    assert report.indexed == 3 and report.ok
    assert WaitingVectoriser.waited is True, extracted


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        server.make_bucket("photos")
        server.make_bucket("media")
        yield server


def test_an_s3_folder_is_indexed_like_a_local_one(
    s3: S3Server, tiny_env: dict[str, str], data_dir: Path
) -> None:
    client = s3.client()
    for name in ("chelsea", "coffee"):
        client.put_object(Bucket="photos", Key=f"trip/{name}.jpg", Body=photo_bytes(name))
    client.put_object(Bucket="photos", Key="trip/.hidden/secret.jpg", Body=photo_bytes("moon"))
    client.put_object(Bucket="photos", Key="trip/notes.bin", Body=b"\x00\x01binary")
    client.put_object(Bucket="photos", Key="trip/empty.jpg", Body=b"")
    client.put_object(Bucket="photos", Key="other/rocket.jpg", Body=photo_bytes("rocket"))
    settings = load_settings(blobs={"url": "s3://media/mmrag", "s3": s3.settings()})
    runtime = open_runtime(settings)
    try:

        def index(*roots: str, prune: bool = False) -> plan.IndexReport:
            with runtime.collection.writer():
                return Indexer(settings, runtime.collection, runtime.vectoriser()).run(list(roots), prune)

        report = index("s3://photos/trip/")
        assert (report.indexed, report.unsupported, [f.reason for f in report.failed]) == (
            2,
            1,
            ["empty file"],
        )
        docs = {doc.path: doc for doc in runtime.collection.documents() if doc.status == "indexed"}
        assert set(docs) == {"s3://photos/trip/chelsea.jpg", "s3://photos/trip/coffee.jpg"}
        (hit,) = runtime.retriever().search(image=photo_image("chelsea"), k=1)
        assert hit.path == "s3://photos/trip/chelsea.jpg" and hit.thumbnail is not None
        assert s3.keys("media", f"mmrag/{hit.thumbnail}") == [f"mmrag/{hit.thumbnail}"]  # the thumbnail too
        assert not (data_dir / hit.thumbnail).exists()

        assert index("s3://photos/trip/").unchanged == 2
        client.put_object(Bucket="photos", Key="trip/coffee.jpg", Body=photo_bytes("astronaut"))
        assert index("s3://photos/trip/").indexed == 1
        (hit,) = runtime.retriever().search(image=photo_image("astronaut"), k=1)
        assert hit.path == "s3://photos/trip/coffee.jpg"

        client.delete_object(Bucket="photos", Key="trip/chelsea.jpg")
        assert index("s3://photos/trip", prune=True).pruned == 1
        assert index("s3://photos/other/rocket.jpg").indexed == 1  # a single object
        with pytest.raises(stages.ExtractionError, match="no objects under s3://photos/typo"):
            index("s3://photos/typo/")
    finally:
        runtime.close()


def test_without_ray_the_ray_runner_says_how_to_install_it(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    rt = open_runtime(tiny_settings)
    try:
        with pytest.raises(ConfigError, match=r"pip install 'mmrag\[ray\]'"):
            make_runner("ray", tiny_settings, rt.collection, rt.vectoriser())
    finally:
        rt.close()
