"""RapidOCR on real images: scikit-image's scanned textbook page, and a texture with no text."""

from __future__ import annotations

import random
import sys

import pytest
import skimage.data
from PIL import Image

from mmrag.caption.base import OcrEngine, OcrLine
from mmrag.caption.ocr import RapidOcrEngine, ocr_text
from mmrag.errors import ConfigError

pytest.importorskip("rapidocr_onnxruntime")


@pytest.fixture(scope="module")
def engine() -> RapidOcrEngine:
    return RapidOcrEngine()


@pytest.fixture(scope="module")
def page_lines(engine: RapidOcrEngine) -> list[OcrLine]:
    return engine.read(Image.fromarray(skimage.data.page()))  # 384x191 grayscale scan


def test_construction_loads_nothing_and_id_names_the_version() -> None:
    lazy = RapidOcrEngine()
    assert isinstance(lazy, OcrEngine)
    assert lazy._engine is None
    assert lazy.ocr_id.startswith("rapidocr-onnxruntime@1.")
    assert RapidOcrEngine(min_score=0.8).ocr_id != lazy.ocr_id
    with pytest.raises(ConfigError, match="min_score"):
        RapidOcrEngine(min_score=2.0)


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install rapidocr-onnxruntime"):
        RapidOcrEngine().read(Image.fromarray(skimage.data.page()))


@pytest.mark.slow
def test_page_scan_words_and_boxes(page_lines: list[OcrLine]) -> None:
    text = ocr_text(page_lines).lower()
    # Words the page really shows ("Region-based segmentation ... markers of the coins and the background").
    for word in ("segmentation", "markers", "coins", "background", "histogram"):
        assert word in text
    height, width = skimage.data.page().shape
    for line in page_lines:
        x0, y0, x1, y1 = line.box
        assert 0 <= x0 < x1 <= width + 1
        assert 0 <= y0 < y1 <= height + 1
        assert 0.5 <= line.score <= 1.0
    title = next(line for line in page_lines if "segmentation" in line.text.lower())
    assert title.box[1] < 30  # the heading is the first line of the page


@pytest.mark.slow
def test_texture_without_text_gives_few_lines(engine: RapidOcrEngine) -> None:
    lines = engine.read(Image.fromarray(skimage.data.grass()))
    assert len(lines) <= 1
    assert sum(len(line.text) for line in lines) < 5


@pytest.mark.slow
def test_ocr_text_restores_reading_order_of_shuffled_lines(page_lines: list[OcrLine]) -> None:
    in_order = ocr_text(page_lines)
    assert len(in_order.splitlines()) == len(page_lines) >= 4  # the page's rows overlap by a few px only
    assert in_order.splitlines()[0].lower().startswith("region")
    assert in_order.splitlines()[-1].lower().startswith("histogram")
    shuffled = list(page_lines)
    random.Random(7).shuffle(shuffled)
    assert ocr_text(shuffled) == in_order


def test_ocr_text_joins_pieces_of_one_row_left_to_right() -> None:
    # Two detector pieces of one printed line (different heights), then the next line, given out of order.
    right = OcrLine("the background", box=(210.0, 48.0, 380.0, 66.0), score=0.9)
    left = OcrLine("markers of the coins and", box=(4.0, 46.0, 200.0, 67.0), score=0.9)
    below = OcrLine("These markers are pixels", box=(3.0, 63.0, 379.0, 86.0), score=0.9)
    above = OcrLine("Region-based segmentation", box=(7.0, 12.0, 292.0, 33.0), score=0.9)
    assert ocr_text([below, right, above, left]) == (
        "Region-based segmentation\nmarkers of the coins and the background\nThese markers are pixels"
    )
    assert ocr_text([]) == ""
