from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from mmrag.embed.clip import ClipEmbedder
from mmrag.errors import ConfigError
from mmrag.registry import parse_clip_id
from mmrag.settings import ModelSettings
from tests.conftest import TINY_CLIP, TINY_CLIP_CONFIG


@pytest.fixture(scope="module")
def tiny_clip() -> ClipEmbedder:
    return ClipEmbedder(
        ModelSettings(clip=TINY_CLIP, model_config_paths=[TINY_CLIP_CONFIG.parent], batch_size=2)
    )


def test_parse_model_ids() -> None:
    spec = parse_clip_id("open_clip:ViT-B-32/laion2b_s34b_b79k")
    assert (spec.open_clip_name, spec.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_clip_id("hf-hub:timm/ViT-B-16-SigLIP").open_clip_name == "hf-hub:timm/ViT-B-16-SigLIP"


def test_unknown_architecture_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        parse_clip_id("open_clip:ViT-B-33/openai")


def test_architecture_without_weights_is_refused() -> None:
    # random weights differ per process: an index built with them would be noise
    with pytest.raises(ConfigError, match=r"names no weights.*laion2b_s34b_b79k"):
        parse_clip_id("open_clip:ViT-B-32")


def test_unknown_pretrained_tag_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown pretrained tag 'laion9'.*laion2b_s34b_b79k"):
        parse_clip_id("open_clip:ViT-B-32/laion9")


def test_unknown_scheme_and_bad_paths(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown CLIP model id"):
        parse_clip_id("clip-vit-base")
    with pytest.raises(ConfigError, match=r"open_clip_config\.json"):
        parse_clip_id(f"local-dir:{tmp_path}")
    with pytest.raises(ConfigError, match="weights file not found"):
        parse_clip_id(f"open_clip:ViT-B-32/{tmp_path}/missing.pt")


def test_hub_model_unreachable_offline_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = ClipEmbedder(ModelSettings(clip="hf-hub:nobody/no-such-clip"))
    with pytest.raises(ConfigError, match="could not load CLIP model hf-hub:nobody/no-such-clip"):
        embedder.load()


def test_images_and_texts_share_one_normalised_space(tiny_clip: ClipEmbedder) -> None:
    photos = [
        Image.fromarray(skdata.chelsea()),
        Image.fromarray(skdata.astronaut()),
        Image.fromarray(skdata.coffee()),
    ]
    img = tiny_clip.encode_images(photos)
    txt = tiny_clip.encode_texts(["a cat", "an astronaut", "coffee"])
    assert img.shape == txt.shape == (3, 32)
    assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    # batch size 2 splits the batch; results must not depend on batching
    single = tiny_clip.encode_images(photos[2:])
    assert np.allclose(single[0], img[2], atol=1e-5)
    assert tiny_clip.encode_texts([]).shape == (0, 32)


def test_long_text_is_truncated_to_the_context_not_an_error(tiny_clip: ClipEmbedder) -> None:
    words = " ".join(["telescope"] * 500)
    assert tiny_clip.context_length == 77
    vec = tiny_clip.encode_texts([words, words + " galaxy"])
    # everything past 77 tokens is cut, so the extra word changes nothing
    assert np.allclose(vec[0], vec[1], atol=1e-6)
