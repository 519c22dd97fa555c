"""The ingest pipeline in-process (tiny CLIP): hostile input, nothing lost, one writer at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrag.collection import CollectionLocked
from mmrag.ingest.pipeline import Indexer
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
