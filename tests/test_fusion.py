"""Fusion: one ranking out of lists whose raw scores live on different scales."""

from __future__ import annotations

import numpy as np

from mmrag.retrieve.calibration import Calibration, _background
from mmrag.retrieve.fusion import calibrated_fusion, raw_score_merge, reciprocal_rank_fusion


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gap_space(rng: np.random.Generator, dim: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A space with CLIP's modality gap: text vectors sit around one direction, image vectors around another,
    so any text query scores every text item higher than every image item."""
    text_dir, image_dir = _unit(rng.normal(size=dim)), _unit(rng.normal(size=dim))
    texts = _unit(text_dir * 3 + rng.normal(size=(200, dim)) * 0.4)
    images = _unit(image_dir * 3 + rng.normal(size=(200, dim)) * 0.4)
    queries = _unit(text_dir * 3 + rng.normal(size=(64, dim)) * 0.4)
    return texts, images, queries


def test_raw_scores_rank_all_text_above_images_calibrated_scores_interleave() -> None:
    rng = np.random.default_rng(0)
    texts, images, queries = _gap_space(rng)
    calib = Calibration(
        stats={"clip:text>text": _background(queries, texts), "clip:text>image": _background(queries, images)}
    )
    # One query whose best image is a far better match, for an image, than its best text is for a text.
    query = queries[0]
    text_scores, image_scores = texts @ query, images @ query
    image_scores[7] = float(np.max(images @ query) + 0.25)  # the one image that really matches
    by_modality = {
        "clip:text>text": sorted(((i, float(s)) for i, s in enumerate(text_scores)), key=lambda p: -p[1]),
        "clip:text>image": sorted(
            ((1000 + i, float(s)) for i, s in enumerate(image_scores)), key=lambda p: -p[1]
        ),
    }
    modality_of = {i: "text" for i in range(200)} | {1000 + i: "image" for i in range(200)}
    assert min(text_scores) > max(s for i, s in enumerate(image_scores) if i != 7)  # the gap is real here

    # one index for both modalities: at any depth below 200 the list holds text alone
    one_index = sorted(by_modality["clip:text>text"] + by_modality["clip:text>image"], key=lambda p: -p[1])
    assert all(modality_of[i] == "text" for i, _ in one_index[:50])

    # per-modality lists, merged by raw score: still all text above all images
    lists = {name: ranked[:30] for name, ranked in by_modality.items()}
    raw = raw_score_merge(lists, 10)
    assert all(modality_of[h.item_id] == "text" for h in raw)  # the matching image never shows up

    fused = calibrated_fusion(lists, 10, modality_of, calib.z)
    assert fused[0].item_id == 1007  # it stands out most from its own modality's background
    assert {modality_of[h.item_id] for h in fused} == {"text", "image"}
    assert fused[0].score > fused[1].score


def test_an_item_found_in_two_spaces_is_counted_once_with_both_ranks() -> None:
    lists = {"clip:text": [(1, 0.3), (2, 0.29), (3, 0.2)], "text:text": [(2, 0.8), (4, 0.7)]}
    fused = reciprocal_rank_fusion(lists, 10)
    assert [h.item_id for h in fused] == [2, 1, 4, 3]
    assert fused[0].ranks == {"clip:text": 2, "text:text": 1}
    assert fused[0].scores == {"clip:text": 0.29, "text:text": 0.8}
    assert fused[0].score == 1 / 62 + 1 / 61
    calib = Calibration(stats={"clip:text": (0.1, 0.1), "text:text": (0.2, 0.2)})
    cal = calibrated_fusion(lists, 2, {1: "text", 2: "text", 3: "text", 4: "text"}, calib.z)
    assert cal[0].item_id == 2 and cal[0].score == max(cal[0].calibrated.values())
    assert len(cal) == 2


def test_stale_calibration_is_refitted_on_growth() -> None:
    calib = Calibration(counts={"text": 100})
    assert not calib.stale({"text": 110})
    assert calib.stale({"text": 130}) and calib.stale({"text": 100, "clip": 5})
