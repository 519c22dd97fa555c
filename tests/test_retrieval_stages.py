"""The stages after fusion, wired end to end: near-duplicate folding of real photo copies (a file, a resized
copy, and the same photo inside a PDF) indexed through the pipeline, `mmrag duplicates`, and the reranker
(a tiny random cross-encoder) inside Retriever.search."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmrag.cli import app
from mmrag.ingest.pipeline import Indexer
from mmrag.retrieve.rerank import RERANK_LIST, Reranker
from mmrag.retrieve.search import Hit, Retriever
from mmrag.runtime import open_runtime
from mmrag.settings import Settings
from tests.realdata import photo_image, write_pdf_with_photos, write_photos
from tests.tiny_cross_encoder import build_tiny_cross_encoder


@pytest.fixture
def library(tmp_path: Path) -> Path:
    """astronaut.jpg and chelsea.jpg, a half-size PNG copy of the astronaut, and report.pdf with the coffee
    photo on p.1 and the astronaut on p.2."""
    root = tmp_path / "library"
    write_photos(root / "photos", ["astronaut", "chelsea"])
    small = root / "small" / "astronaut.png"
    small.parent.mkdir(parents=True)
    photo_image("astronaut").resize((256, 256), Image.Resampling.LANCZOS).save(small)
    write_pdf_with_photos(root / "docs" / "report.pdf", [["coffee"], ["astronaut"]])
    return root


def test_copies_of_a_photo_fold_into_one_hit_end_to_end(
    tiny_settings: Settings, library: Path, tiny_env: dict[str, str]
) -> None:
    runtime = open_runtime(tiny_settings)
    try:
        with runtime.collection.writer():
            report = Indexer(tiny_settings, runtime.collection, runtime.vectoriser()).run([library])
        assert report.indexed == 4 and not report.failed
        query = photo_image("astronaut")
        folded = runtime.retriever().search(image=query, k=10)
        apart = Retriever(runtime.collection, runtime.encoders, fold_duplicates=False).search(
            image=query, k=10
        )
    finally:
        runtime.close()
    astronauts = {"astronaut.jpg", "astronaut.png", "report.pdf p.2"}

    def label(hit: Hit) -> str:
        return Path(hit.path).name + (f" p.{hit.page}" if hit.page else "")

    unfolded = [h for h in apart if label(h) in astronauts and h.modality == "image"]
    assert len(unfolded) == 3  # without folding the same picture comes back three times
    shown = [h for h in folded if label(h) in astronauts and h.modality == "image"]
    assert len(shown) == 1, [label(h) for h in folded]
    copies = [Path(c["path"]).name + (f" p.{c['page']}" if c["page"] else "") for c in shown[0].also_in]
    assert sorted(copies) == sorted(astronauts - {label(shown[0])})
    assert len(folded) == len(apart) - 2  # the other two copies are not shown again

    result = CliRunner().invoke(app, ["duplicates"], env=tiny_env)
    assert result.exit_code == 0, result.output
    assert "1 groups of near-duplicate images, 3 images" in result.output
    assert "report.pdf p.2" in result.output and "chelsea" not in result.output


def test_the_reranker_reorders_the_fused_hits_inside_search(
    tiny_settings: Settings, tmp_path: Path, tiny_env: dict[str, str]
) -> None:
    from tests.realdata import write_markdown

    write_markdown(tmp_path / "notes" / "photos.md")
    model = build_tiny_cross_encoder(tmp_path / "cross-encoder")
    runtime = open_runtime(tiny_settings)
    try:
        with runtime.collection.writer():
            Indexer(tiny_settings, runtime.collection, runtime.vectoriser()).run([tmp_path / "notes"])
        fused = Retriever(runtime.collection, runtime.encoders).search("a cat on a sofa", k=5)
        reranker = Reranker(str(model), device="cpu")
        reranked = Retriever(runtime.collection, runtime.encoders, reranker=reranker, rerank_top_n=20).search(
            "a cat on a sofa", k=5
        )
        image_query = Retriever(runtime.collection, runtime.encoders, reranker=reranker).search(
            image=photo_image("chelsea"), k=3
        )
    finally:
        runtime.close()
    assert all(RERANK_LIST not in h.ranks for h in fused)
    assert [h.ranks[RERANK_LIST] for h in reranked] == list(range(1, len(reranked) + 1))
    scores = [h.scores[RERANK_LIST] for h in reranked]
    assert scores == sorted(scores, reverse=True)
    assert all(RERANK_LIST not in h.ranks for h in image_query)  # no query text: nothing to rerank
