from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from mmrag.embed.clip import ClipEmbedder, preprocess_workers
from mmrag.embed.clip_images import ImageBatcher, tensor_transform
from mmrag.embed.clip_text import encode_trimmed, real_length, text_tower
from mmrag.embed.query_cache import QueryCache
from mmrag.errors import ConfigError
from mmrag.registry import parse_clip_id
from mmrag.settings import ModelSettings
from tests.conftest import ASSETS, TINY_CLIP, TINY_CLIP_CONFIG, tiny_clip_id

CUSTOM_TEXT_CONFIG = ASSETS / "mmrag-test-tiny-customtext.json"  # open_clip's TextTransformer, causal
BIDIRECTIONAL_CONFIG = ASSETS / "mmrag-test-tiny-bidirectional.json"  # SigLIP-style text tower


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


# ---- text on its real tokens ------------------------------------------------------------------------

TEXTS = ["a", "a cat", "an astronaut standing on the moon next to a flag", " ".join(["telescope"] * 300)]


def _embedder(config: Path, **settings: Any) -> ClipEmbedder:
    return ClipEmbedder(
        ModelSettings(clip=tiny_clip_id(config), model_config_paths=[ASSETS], batch_size=3, **settings)
    )


@pytest.mark.parametrize("config", [TINY_CLIP_CONFIG, CUSTOM_TEXT_CONFIG], ids=["CLIP", "CustomTextCLIP"])
def test_causal_text_towers_run_on_real_tokens_and_equal_the_padded_run(config: Path) -> None:
    trimmed, padded = _embedder(config), ClipEmbedder(_embedder(config)._settings, trim_text=False)
    assert trimmed.trims_text and not padded.trims_text
    assert "matches the padded run" in trimmed.text_trim_note
    tower = text_tower(trimmed._model)
    tokens = trimmed._tokenizer(["a cat"])
    assert tokens.shape[1] == 77 and real_length(tokens) == 4  # start, "a", "cat", end: 4 of 77 positions
    # In batches of 3 with lengths from 3 to 77 tokens, and one at a time: the padded run's vectors.
    np.testing.assert_allclose(trimmed.encode_texts(TEXTS), padded.encode_texts(TEXTS), atol=1e-5)
    for text in TEXTS:
        np.testing.assert_allclose(trimmed.encode_texts([text]), padded.encode_texts([text]), atol=1e-5)
    assert tower is not None and tower.attn_mask is not None


def test_a_bidirectional_text_tower_falls_back_to_the_padded_run() -> None:
    # SigLIP-style: no causal mask and the last position pooled, so the padding shapes the vector.
    siglip_like = _embedder(BIDIRECTIONAL_CONFIG)
    assert siglip_like.context_length == 64
    assert not siglip_like.trims_text
    assert siglip_like.text_trim_note.startswith("padded: shortened run differs")
    tower = text_tower(siglip_like._model)
    assert tower is not None and tower.attn_mask is None and tower.pool_type == "last"
    tokens = siglip_like._tokenizer(["a cat"])
    with torch.inference_mode():  # what the check saw: the shortened run really is another vector
        short = torch.nn.functional.normalize(encode_trimmed(tower, tokens), dim=-1)
        full = torch.nn.functional.normalize(siglip_like._model.encode_text(tokens), dim=-1)
    assert float((short - full).abs().max()) > 0.01
    padded = ClipEmbedder(siglip_like._settings, trim_text=False)
    np.testing.assert_array_equal(siglip_like.encode_texts(TEXTS), padded.encode_texts(TEXTS))


# ---- query cache ------------------------------------------------------------------------------------


def test_a_repeated_query_comes_from_the_cache(tiny_clip: ClipEmbedder) -> None:
    fresh = ClipEmbedder(tiny_clip._settings)
    first = fresh.encode_texts(["a red bicycle"])
    first[0, 0] = 42.0  # the caller's copy: the cache keeps its own
    again = fresh.encode_texts(["a red bicycle"])
    assert (fresh.query_cache.hits, fresh.query_cache.misses) == (1, 1)
    np.testing.assert_allclose(again, fresh.encode_texts(["a red bicycle", "x"])[:1], atol=1e-5)
    fresh.encode_texts(["a red bicycle", "a blue bicycle"])  # batches (ingest) bypass the cache
    assert len(fresh.query_cache) == 1


def test_query_cache_evicts_the_least_recently_used_and_can_be_off() -> None:
    cache = QueryCache(2)
    for text in ("a", "b"):
        cache.put(text, np.full(3, ord(text), dtype=np.float32))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.zeros(3, dtype=np.float32))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    off = QueryCache(0)
    off.put("a", np.zeros(3, dtype=np.float32))
    assert off.get("a") is None and len(off) == 0
    with pytest.raises(ValueError, match="capacity"):
        QueryCache(-1)


# ---- images prepared as tensors, ahead of the forward pass ------------------------------------------


def _photos() -> list[Image.Image]:
    return [
        Image.fromarray(skdata.chelsea()),  # 451x300
        Image.fromarray(skdata.astronaut()),  # 512x512
        Image.fromarray(skdata.coffee()),  # 600x400
        Image.fromarray(skdata.camera()),  # greyscale
        Image.fromarray(skdata.rocket()).convert("RGBA"),
    ]


def test_tensor_preprocessing_gives_open_clips_vectors(tiny_clip: ClipEmbedder) -> None:
    photos = _photos()
    fast = tiny_clip.encode_images(photos)
    transform = tiny_clip._images.transform
    assert transform is not None and len(transform.geometry) == 2  # resize, centre crop: open_clip's own
    with torch.inference_mode():
        reference = tiny_clip._model.encode_image(torch.stack([tiny_clip._preprocess(p) for p in photos]))
    reference = torch.nn.functional.normalize(reference, dim=-1).numpy()
    # Pixels within one grey level of PIL's resize: the vectors agree to 1e-4.
    assert (fast * reference).sum(axis=1).min() > 0.9999
    pixels = tiny_clip._images.prepare(photos[0])
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, 64, 64)
    difference = pixels.permute(1, 2, 0).numpy().astype(int) - np.asarray(
        tiny_clip._preprocess.transforms[1](tiny_clip._preprocess.transforms[0](photos[0]))
    ).astype(int)
    assert np.abs(difference).max() <= 1


def test_batches_prepared_ahead_give_the_same_vectors_in_order(tiny_clip: ClipEmbedder) -> None:
    photos = _photos() * 3  # 15 images: 8 batches of 2, the last one short
    together = tiny_clip.encode_images(photos)
    assert together.shape == (15, 32)
    for number in (0, 7, 14):
        np.testing.assert_allclose(together[number], tiny_clip.encode_images([photos[number]])[0], atol=1e-5)
    assert tiny_clip.encode_images([]).shape == (0, 32)


def test_a_transform_without_a_tensor_form_runs_as_open_clip_wrote_it() -> None:
    from open_clip.transform import image_transform

    keep_ratio = image_transform(64, is_train=False, resize_mode="longest")  # ResizeKeepRatio + pad
    assert tensor_transform(keep_ratio) is None
    batcher = ImageBatcher(keep_ratio, "cpu", torch.float32, workers=2)
    photos = _photos()
    batches = list(batcher.batches(photos, 2))
    assert [len(b) for b in batches] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(batches), torch.stack([keep_ratio(p) for p in photos]))
    batcher.close()


def test_preprocess_workers_follow_the_setting_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mmrag.embed.clip.usable_cores", lambda: 16)
    assert (preprocess_workers(0, "cpu"), preprocess_workers(0, "cuda"), preprocess_workers(3, "cpu")) == (
        4,
        8,
        3,
    )
    monkeypatch.setattr("mmrag.embed.clip.usable_cores", lambda: 2)
    assert (preprocess_workers(0, "cpu"), preprocess_workers(0, "cuda")) == (1, 2)
