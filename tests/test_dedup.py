"""Near-duplicate fingerprints and grouping, on real images: copies of a photo (resized, re-encoded, embedded
in a PDF and read back by extract_pdf) group; different faces, handwritten digits and manual pages do not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.duplicates import (
    COPIES,
    Sample,
    digit_samples,
    gnuplot_samples,
    lfw_samples,
    load_source,
    pdf_samples,
)
from mmrag.evaluation.datasets import GNUPLOT_PDF
from mmrag.ingest.dedup import (
    MIN_SIDE,
    DuplicateRule,
    Fingerprint,
    compare,
    duplicate_pairs,
    fingerprint,
    group_duplicates,
    is_duplicate,
)

PHOTOS = ("astronaut", "chelsea", "camera", "coffee", "china", "grace_hopper")
# Copies a photo must group with: everything bench/duplicates.py counts, except thumbnails under 32 pixels and
# JPEG at quality 15, which the README lists as misses.
KEPT_COPIES = [name for name in COPIES if name not in ("thumb24", "thumb16", "jpeg q15")]


@pytest.fixture(scope="module")
def photo_copies(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    samples = []
    for name in PHOTOS:
        original = load_source(name)
        samples += [
            Sample(f"{name}/{copy}", name, "photo", copy, COPIES[copy](original)) for copy in KEPT_COPIES
        ]
    return samples + pdf_samples(PHOTOS, tmp_path_factory.mktemp("pdf"))


def _fingerprints(samples: list[Sample]) -> list[tuple[str, Fingerprint]]:
    prints = []
    for sample in samples:
        fp = fingerprint(sample.image)
        assert fp is not None, sample.key
        prints.append((sample.key, fp))
    return prints


def test_copies_of_each_photo_form_one_group_and_nothing_else(photo_copies: list[Sample]) -> None:
    groups = group_duplicates(_fingerprints(photo_copies))
    expected = {name: {s.key for s in photo_copies if s.source == name} for name in PHOTOS}
    assert sorted(map(set, groups), key=sorted) == sorted(expected.values(), key=sorted)
    assert any("pdf" in key for key in expected["astronaut"])  # read back through extract_pdf


def test_chosen_rule_separates_a_sample_of_the_validation_pairs(photo_copies: list[Sample]) -> None:
    """Different pictures that look alike to a perceptual hash: faces (scaled up), handwritten digits of the
    same class (scaled up), pages of a manual. The chosen rule accepts every copy pair and no other pair; the
    sample is hard enough that pHash alone accepts false pairs on it."""
    negatives = lfw_samples() + digit_samples()[:600]
    if GNUPLOT_PDF.is_file():  # CI installs gnuplot-doc; its contents pages are the hardest negatives
        negatives += gnuplot_samples(GNUPLOT_PDF, pages=40)
    samples = photo_copies + negatives
    prints = [fp for _, fp in _fingerprints(samples)]
    sources = [s.source for s in samples]

    accepted = {(i, j) for i, j, _ in duplicate_pairs(prints)}
    false_pairs = [(samples[i].key, samples[j].key) for i, j in accepted if sources[i] != sources[j]]
    assert false_pairs == []
    copy_pairs = {
        (i, j) for i in range(len(samples)) for j in range(i + 1, len(samples)) if sources[i] == sources[j]
    }
    assert copy_pairs <= accepted

    hash_only = replace(
        DuplicateRule(), max_luma_rms=1e9, min_luma_corr=-1.0, max_chroma_diff=255, max_aspect_diff=1e9
    )
    fooled = [(i, j) for i, j, _ in duplicate_pairs(prints, hash_only) if sources[i] != sources[j]]
    assert len(fooled) > 10


def test_edits_that_change_the_picture_do_not_group() -> None:
    photo = load_source("coffee")
    original = fingerprint(photo)
    width, height = photo.size
    edits = {
        "crop 5%": photo.crop((30, 20, width - 30, height - 20)),
        "stretched": photo.resize((round(width * 1.1), height)),
        "grey": photo.convert("L").convert("RGB"),
        "other photo": load_source("chelsea"),
    }
    for name, edited in edits.items():
        copy = fingerprint(edited)
        assert original is not None and copy is not None
        assert not is_duplicate(original, copy), name


def test_blank_images_never_match() -> None:
    white = fingerprint(Image.new("RGB", (200, 100), (255, 255, 255)))
    white_small = fingerprint(Image.new("RGB", (100, 50), (255, 255, 255)))
    assert white is not None and white_small is not None
    assert compare(white, white_small).luma_corr == 0.0
    assert not is_duplicate(white, white_small)


def test_images_under_the_size_limit_get_no_fingerprint() -> None:
    photo = load_source("astronaut")
    assert fingerprint(photo.resize((MIN_SIDE - 1, 200))) is None
    assert fingerprint(photo.resize((MIN_SIDE, MIN_SIDE))) is not None


def test_fingerprint_text_round_trip_and_errors() -> None:
    fp = fingerprint(load_source("rocket"))
    assert fp is not None
    text = fp.to_text()
    assert text.startswith("v1:") and len(text) < 450
    assert Fingerprint.from_text(text) == fp
    for bad in ("", "v0:" + text[3:], text[:-8], "v1:zz:1x1:AAAA"):
        with pytest.raises(ValueError):
            Fingerprint.from_text(bad)


def _shifted(base: Fingerprint, grey_levels: np.ndarray) -> Fingerprint:
    luma = np.frombuffer(base.luma, dtype=np.uint8).astype(np.int16) + grey_levels.astype(np.int16)
    return replace(base, luma=np.clip(luma, 0, 255).astype(np.uint8).tobytes())


def test_complete_linkage_does_not_chain_look_alikes() -> None:
    """A is like B, B like C, A not like C: complete linkage keeps A and C apart, single linkage joins all."""
    a = fingerprint(load_source("camera"))
    assert a is not None
    step = np.where(np.arange(256) % 2 == 0, 3, -3)  # 3 grey levels RMS, mean unchanged
    b, c = _shifted(a, np.rint(step * 2 / 3)), _shifted(a, np.rint(step * 4 / 3))
    rule = DuplicateRule()
    assert compare(a, b).within(rule) and compare(b, c).within(rule) and not compare(a, c).within(rule)
    items = [("a", a), ("b", b), ("c", c)]
    complete = group_duplicates(items, rule)
    assert len(complete) == 1 and len(complete[0]) == 2 and "b" in complete[0]
    assert group_duplicates(items, replace(rule, linkage="single")) == [["a", "b", "c"]]


def test_embeddings_must_agree_when_both_images_have_one() -> None:
    photo = load_source("china")
    original, half = fingerprint(photo), fingerprint(photo.resize((320, 214)))
    assert original is not None and half is not None
    east, north = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    items = [("orig", original), ("half", half)]
    assert group_duplicates(items) == [["orig", "half"]]
    assert group_duplicates(items, vectors={"orig": east, "half": east}) == [["orig", "half"]]
    assert group_duplicates(items, vectors={"orig": east, "half": north}) == []
    assert group_duplicates(items, vectors={"orig": east}) == [["orig", "half"]]  # one vector: no check
    with pytest.raises(ValueError, match="same key"):
        group_duplicates([("x", original), ("x", half)])


def test_fingerprint_of_a_pdf_image_matches_the_file(tmp_path: Path) -> None:
    """The path ingest takes for both: extract_image_file for the photo, extract_pdf for the PDF copy."""
    from mmrag.ingest.images import extract_image_file
    from mmrag.settings import IngestSettings
    from tests.realdata import write_pdf_with_photos, write_photos

    photo_path = write_photos(tmp_path, ["grace_hopper"], fmt="png")["grace_hopper"]
    pdf_path = tmp_path / "report.pdf"
    write_pdf_with_photos(pdf_path, [["coffee"], ["grace_hopper"]])
    from mmrag.ingest.pdf import extract_pdf

    settings = IngestSettings()
    [file_item] = extract_image_file(photo_path, settings)
    pdf_images = [item for item in extract_pdf(pdf_path, settings) if item.image is not None]
    assert file_item.image is not None
    file_fp = fingerprint(file_item.image)
    matches = [item.page for item in pdf_images if is_duplicate(file_fp, fingerprint(item.image))]  # type: ignore[arg-type]
    assert matches == [2]


def test_bench_entry_point_writes_its_tables(tmp_path: Path) -> None:
    """python -m bench.duplicates at toy size: two photos, 40 digits, no manual (the README's numbers come
    from the full run)."""
    import json

    from bench.duplicates import main

    out = tmp_path / "duplicates.json"
    assert (
        main(["--photos", "2", "--digits", "40", "--gnuplot", str(tmp_path / "none.pdf"), "--out", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["images"] == {"photo": 54, "synthetic": 5, "lfw": 200, "digits": 40}
    assert result["pairwise"]["false_pairs"] == 0 and result["pairwise"]["true_pairs"] > 600
    assert result["groups"]["pure_groups"] == result["groups"]["groups"] == 2
    assert [row["min_side"] for row in result["min_side_table"]] == [8, 16, 24, 32, 48]
    assert result["grid"][0]["change"] == "chosen" and "crop 5%" in result["edits"]
