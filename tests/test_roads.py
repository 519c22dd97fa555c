"""The two roads for images, with real offline weights: CLIP's image tower, and caption (+ OCR) -> text space.

Offline profile = configs/offline.yaml: MiniLM text space, EfficientNet-Lite0 labels and RapidOCR.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata
from sqlalchemy import func, select

from mmrag.ingest.pipeline import Indexer
from mmrag.runtime import Runtime, open_runtime
from mmrag.settings import load_settings
from mmrag.store.models import Caption
from tests.conftest import ASSETS, TINY_CLIP
from tests.realdata import write_markdown, write_pdf_with_photos, write_photos

pytestmark = pytest.mark.slow
pytest_plugins = ["conftest_openai"]

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "camera", "grace_hopper"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    write_photos(root / "photos", PHOTOS)
    Image.fromarray(skdata.page()).save(root / "photos" / "scanned_page.png")  # a real scanned textbook page
    write_markdown(root / "notes.md")
    write_pdf_with_photos(
        root / "report.pdf", [["coffee"], ["rocket"]], text=["Morning coffee.", "Launch day."]
    )
    return root


def _index(rt: Runtime, *roots: Path):  # type: ignore[no-untyped-def]
    return Indexer(rt.settings, rt.collection, rt.vectoriser()).run(list(roots))


@pytest.fixture(scope="module")
def offline(library: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = load_settings(REPO / "configs" / "offline.yaml", data_dir=tmp_path_factory.mktemp("data"))
    rt = open_runtime(settings)
    report = _index(rt, library)
    assert report.ok and report.indexed == 9, report
    yield rt
    rt.close()


def _top(rt: Runtime, query: str, k: int = 3) -> list[str]:
    return [Path(h.path).name for h in rt.retriever().search(query, k=k)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("a cat", "chelsea.jpg"),
        ("an espresso", {"coffee.jpg", "report.pdf"}),
        ("a missile", {"rocket.jpg", "report.pdf"}),
    ],
)
def test_caption_road_finds_real_photos_by_what_they_show(offline: Runtime, query: str, expected) -> None:  # type: ignore[no-untyped-def]
    top = _top(offline, query)
    assert top[0] in ({expected} if isinstance(expected, str) else expected), top


def test_ocr_text_of_a_scanned_page_is_stored_and_searchable(offline: Runtime) -> None:
    hits = offline.retriever().search("segmentation markers histogram", k=3)
    assert Path(hits[0].path).name == "scanned_page.png"
    assert "segmentation" in (hits[0].text or "").lower()


def test_hits_report_per_space_lists(offline: Runtime) -> None:
    hits = offline.retriever().search("a cat", k=10)
    assert {h.modality for h in hits} == {"image", "text"}
    for h in hits:
        lists = {"text:text>image", "text:text>text", "lexical:text>image", "lexical:text>text"}
        assert set(h.ranks) <= lists and h.ranks
        assert set(h.calibrated) == set(h.ranks)


def test_captions_are_cached_by_image_hash(offline: Runtime, library: Path, tmp_path: Path) -> None:
    with offline.db.session() as s:
        before = s.scalar(select(func.count()).select_from(Caption))
    calls: list[int] = []
    captioner = offline.captioner
    assert captioner is not None
    original = captioner.caption
    captioner.caption = lambda images: calls.append(len(images)) or original(images)  # type: ignore[method-assign]
    try:
        # the same photos under another folder: new documents, known pixels
        write_photos(tmp_path / "again", ["chelsea", "coffee"])
        report = _index(offline, tmp_path / "again")
    finally:
        captioner.caption = original  # type: ignore[method-assign]
    assert report.indexed == 2 and calls == []
    with offline.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Caption)) == before
    (top, *_) = offline.retriever().search("a cat", k=2)
    copies = [top.path, *(copy["path"] for copy in top.also_in)]
    assert sorted(Path(p).parent.name for p in copies) == ["again", "photos"]  # both copies, as one hit


@pytest.fixture
def text_only_with(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**caption: object) -> Runtime:
        settings = load_settings(
            data_dir=tmp_path / "data",
            spaces={"clip": False, "text": True},
            ingest={"road": "caption"},
            caption=caption,
        )
        return open_runtime(settings)

    return make


def test_openai_compatible_captioner_through_the_pipeline(
    openai_stub, text_only_with, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_photos(tmp_path / "lib", ["chelsea", "astronaut"])
    model = openai_stub.unique("echo")
    rt = text_only_with(backend="openai", base_url=openai_stub.base_url, model=model, max_retries=0)
    report = _index(rt, tmp_path / "lib")
    assert report.ok and report.indexed == 2
    requests = openai_stub.records(model)
    assert len(requests) == 2
    content = requests[0]["body"]["messages"][0]["content"]
    assert content[0]["type"] == "text" and "search" in content[0]["text"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with rt.db.session() as s:
        texts = s.scalars(select(Caption.text)).all()
    assert len(texts) == 2 and all(t and t.startswith("images=1 sha1=") for t in texts)
    rt.close()


def test_unreachable_captioner_fails_images_not_the_run(
    text_only_with,
    tmp_path: Path,
    closed_loopback_port: int,  # type: ignore[no-untyped-def]
) -> None:
    write_photos(tmp_path / "lib", ["chelsea"])
    write_markdown(tmp_path / "lib" / "notes.md")
    rt = text_only_with(
        backend="openai", base_url=f"http://127.0.0.1:{closed_loopback_port}/v1", model="m", max_retries=0
    )
    report = _index(rt, tmp_path / "lib")
    assert report.indexed == 1  # the Markdown file
    assert [Path(f.path).name for f in report.failed] == ["chelsea.jpg"]
    assert "127.0.0.1" in (report.failed[0].reason or "")
    with rt.db.session() as s:  # the failure is recorded, and retried on the next run (not cached)
        assert s.scalars(select(Caption.error)).one()
    rt.close()


def both_roads(tmp_path: Path) -> Runtime:
    """Tiny CLIP for the image tower and real EfficientNet labels in the MiniLM text space."""
    settings = load_settings(
        data_dir=tmp_path / "data",
        models={"clip": TINY_CLIP, "model_config_paths": [ASSETS]},
        ingest={"road": "both"},
        caption={"backend": "efficientnet"},
    )
    return open_runtime(settings)


def test_both_roads_one_ranking_over_photos_and_text(library: Path, tmp_path: Path) -> None:
    rt = both_roads(tmp_path)
    assert _index(rt, library).ok
    assert set(rt.collection.index_keys()) == {"clip.image", "clip.text", "text.image", "text.text"}
    hits = rt.retriever().search("a cat", k=10)
    assert Path(hits[0].path).name == "chelsea.jpg"
    assert {h.modality for h in hits} == {"image", "text"}  # photos and text chunks in one ranking
    assert len({h.item_id for h in hits}) == len(hits)
    rt.close()


def test_both_roads_one_ranking(library: Path, tmp_path: Path) -> None:
    rt = both_roads(tmp_path)
    report = _index(rt, library / "photos")
    assert report.ok
    assert set(rt.collection.index_keys()) == {"clip.image", "text.image"}
    hits = rt.retriever().search("a cat", k=20)
    ids = [h.item_id for h in hits]
    assert len(ids) == len(set(ids)) == 7  # each photo once, though found in two spaces
    cat = next(h for h in hits if Path(h.path).name == "chelsea.jpg")
    assert set(cat.ranks) == {"clip:text>image", "text:text>image", "lexical:text>image"}
    assert Path(hits[0].path).name == "chelsea.jpg"  # the caption road carries it, whatever random CLIP says
    rt.close()
