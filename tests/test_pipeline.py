"""The ingest pipeline in-process (tiny CLIP): hostile input, nothing lost, one writer at a time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.collection import CollectionLocked
from mmrag.ingest.pipeline import FileOutcome, Indexer, NoProgress
from mmrag.runtime import Runtime, open_runtime
from mmrag.settings import Settings
from tests.realdata import photo_image, write_photos


@pytest.fixture
def rt(tiny_settings: Settings):  # type: ignore[no-untyped-def]
    runtime = open_runtime(tiny_settings)
    yield runtime
    runtime.close()


def _index(rt: Runtime, root: Path, prune: bool = False):  # type: ignore[no-untyped-def]
    return Indexer(rt.settings, rt.collection, rt.vectoriser()).run([root], prune=prune)


def test_extreme_strip_image_is_indexed_without_blowing_up(rt: Runtime, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    # 60,000 pixels: far under the bomb limit, but a model resizing its short side to 224 would make it
    # 224 x 13.4M pixels
    Image.fromarray(np.full((1, 60_000, 3), 128, np.uint8)).save(lib / "strip.png")
    report = _index(rt, lib)
    assert report.ok and report.indexed == 1
    (hit,) = rt.retriever().search(image=Image.open(lib / "strip.png").convert("RGB"), k=1)
    assert Path(hit.path).name == "strip.png"
    assert (rt.settings.data_dir / (hit.thumbnail or "missing")).is_file()


def test_a_file_that_turns_corrupt_keeps_its_items_until_it_is_fixed(rt: Runtime, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    photos = write_photos(lib, ["chelsea", "coffee"])
    assert _index(rt, lib).indexed == 2
    good = photos["chelsea"].read_bytes()
    photos["chelsea"].write_bytes(good[: len(good) // 4])
    report = _index(rt, lib)
    assert [Path(f.path).name for f in report.failed] == ["chelsea.jpg"]
    # the earlier version is still searchable
    hits = rt.retriever().search(image=photo_image("chelsea"), k=1)
    assert Path(hits[0].path).name == "chelsea.jpg" and hits[0].scores["clip:image>image"] > 0.99
    doc = rt.collection.document_by_path(str(photos["chelsea"]))
    assert doc is not None and doc.status == "indexed" and "truncated" in (doc.error or "")
    photos["chelsea"].write_bytes(good)  # fixed: indexed again (not skipped as unchanged)
    report = _index(rt, lib)
    assert report.indexed == 1 and report.ok
    assert rt.collection.document_by_path(str(photos["chelsea"])).error is None  # type: ignore[union-attr]


def test_one_writer_per_collection(rt: Runtime, tiny_settings: Settings) -> None:
    other = open_runtime(tiny_settings)
    try:
        with (
            rt.collection.writer(),
            pytest.raises(CollectionLocked, match="being written by another"),
            other.collection.writer(),
        ):
            pass
    finally:
        other.close()


class _Events(NoProgress):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def items_embedded(self, count: int) -> None:
        self.events.append(("items", count))

    def file_done(self, outcome: FileOutcome) -> None:
        self.events.append((outcome.status, Path(outcome.path).name))


def test_progress_reports_items_before_the_first_commit_of_a_multi_file_batch(
    rt: Runtime, tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    write_photos(lib, ["chelsea", "coffee", "rocket", "astronaut", "moon", "coins"])  # one batch of 8
    (lib / "notes.md").write_text("# Notes\n\nThe coffee cup and the cat.\n")
    sink = _Events()
    report = Indexer(rt.settings, rt.collection, rt.vectoriser()).run([lib], progress=sink)
    assert report.ok and report.indexed == 7
    first_commit = next(i for i, (kind, _) in enumerate(sink.events) if kind == "indexed")
    embedded_before = sum(n for kind, n in sink.events[:first_commit] if kind == "items")
    assert embedded_before == report.items, sink.events  # every item of the batch, before any commit
    assert sum(n for kind, n in sink.events if kind == "items") == report.items


def test_files_a_batch_completes_commit_before_a_long_file_that_follows(rt: Runtime, tmp_path: Path) -> None:
    """Three small files, then a text file long enough for several batches: the small ones are committed
    (and reported) while the long one is still being embedded, not after it."""
    lib = tmp_path / "lib"
    write_photos(lib / "a", ["chelsea", "coffee", "rocket"])
    long_text = " ".join(f"word{i}" for i in range(40 * rt.settings.ingest.chunk_words))
    (lib / "b-long.txt").write_text(long_text)
    sink = _Events()
    report = Indexer(rt.settings, rt.collection, rt.vectoriser()).run([lib], progress=sink)
    assert report.ok and report.indexed == 4
    done = [name for kind, name in sink.events if kind == "indexed"]
    assert done[-1] == "b-long.txt"
    long_done = next(i for i, event in enumerate(sink.events) if event == ("indexed", "b-long.txt"))
    photos_done = [
        i for i, (kind, name) in enumerate(sink.events) if kind == "indexed" and name != "b-long.txt"
    ]
    batches_after_photos = [kind for kind, _ in sink.events[max(photos_done) : long_done] if kind == "items"]
    assert batches_after_photos, sink.events  # the long file was still embedding when the photos committed


def test_a_file_name_that_is_not_utf8_is_indexed_and_found(rt: Runtime, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write_photos(lib, ["chelsea"])
    raw = os.path.join(os.fsencode(lib), b"caf\xe9.jpg")
    os.rename(lib / "chelsea.jpg", raw)
    report = _index(rt, lib)
    assert report.ok and report.indexed == 1
    (hit,) = rt.retriever().search(image=photo_image("chelsea"), k=1)
    assert hit.path.endswith("caf\\xe9.jpg")
    doc = rt.collection.document_by_path(hit.path)
    assert doc is not None and os.fsencode(doc.fs_path) == raw
    assert _index(rt, lib).unchanged == 1  # found again by its printable path: not indexed twice
