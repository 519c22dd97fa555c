"""The reranking stage: a tiny random cross-encoder saved to disk, loaded through retrieve.rerank the way
users load a real one, reorders the top fused hits by its own scores. Texts: the sample photos' docstrings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmrag.errors import ConfigError
from mmrag.retrieve.rerank import RERANK_LIST, Reranker, rerank_hits, reranker_from_settings
from mmrag.retrieve.search import Hit
from mmrag.settings import load_settings
from tests.realdata import PHOTO_DESCRIPTIONS
from tests.tiny_cross_encoder import build_tiny_cross_encoder

QUERY = "a photograph of a cat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="module")
def reranker(model_dir: Path) -> Reranker:
    settings = load_settings(None, retrieve={"rerank": str(model_dir), "rerank_top_n": 6})
    loaded = reranker_from_settings(settings.retrieve, device="cpu")
    assert loaded is not None
    return loaded


def _hit(item_id: int, text: str | None, modality: str = "text") -> Hit:
    return Hit(
        item_id=item_id,
        score=10.0 - item_id,  # fused order: item 1 first
        modality=modality,
        path=f"/docs/{item_id}.md",
        page=None,
        bbox=None,
        text=text,
        thumbnail=None,
        ranks={"text:text>text": item_id},
        scores={"text:text>text": 0.5},
    )


@pytest.fixture
def fused_hits() -> list[Hit]:
    names = ["astronaut", "chelsea", "coffee", "rocket", "coins", "moon", "camera", "clock"]
    hits = [_hit(i, PHOTO_DESCRIPTIONS[name]) for i, name in enumerate(names, start=1)]
    hits[2] = _hit(3, None, modality="image")  # an image on the CLIP road: no caption, nothing to read
    hits[4] = _hit(5, PHOTO_DESCRIPTIONS["coins"], modality="image")  # an image with its caption / OCR text
    return hits


def _independent_scores(model_dir: Path, query: str, passages: list[str]) -> np.ndarray:
    """The same model run with transformers directly: sigmoid of the single logit, CrossEncoder's default."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batch = tokenizer([query] * len(passages), passages, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.sigmoid(model(**batch).logits[:, 0]).numpy()


def test_top_hits_are_reordered_by_the_models_own_scores(
    reranker: Reranker, model_dir: Path, fused_hits: list[Hit]
) -> None:
    top_n = 6
    reranked = reranker.rerank(QUERY, fused_hits, top_n)

    readable = [h for h in fused_hits[:top_n] if h.text]
    expected = _independent_scores(model_dir, QUERY, [h.text or "" for h in readable])
    expected_order = [readable[i].item_id for i in np.argsort(-expected, kind="stable")]
    assert len(set(np.round(expected, 4))) == len(expected)  # distinct scores: the order is meaningful
    assert [h.item_id for h in reranked[:top_n] if h.text] == expected_order
    assert expected_order != [h.item_id for h in readable]  # the model did move something

    by_id = {h.item_id: h for h in reranked}
    for hit, score in zip(readable, expected, strict=True):
        assert by_id[hit.item_id].scores[RERANK_LIST] == pytest.approx(float(score), abs=1e-5)
        assert by_id[hit.item_id].scores["text:text>text"] == 0.5  # the fused lists' entries stay
        assert by_id[hit.item_id].score == hit.score  # the fused score stays
    assert sorted(by_id[i].ranks[RERANK_LIST] for i in expected_order) == [1, 2, 3, 4, 5]


def test_hits_without_text_and_beyond_top_n_keep_their_places(
    reranker: Reranker, fused_hits: list[Hit]
) -> None:
    reranked = reranker.rerank(QUERY, fused_hits, top_n=6)
    assert reranked[2].item_id == 3 and RERANK_LIST not in reranked[2].ranks  # the textless image
    assert [h.item_id for h in reranked[6:]] == [7, 8]
    assert all(RERANK_LIST not in h.ranks for h in reranked[6:])
    assert sorted(h.item_id for h in reranked) == list(range(1, 9))
    assert all(RERANK_LIST not in h.ranks for h in fused_hits)  # the caller's hits are not changed


def test_nothing_to_rerank_returns_the_fused_order(reranker: Reranker, fused_hits: list[Hit]) -> None:
    ids = [h.item_id for h in fused_hits]
    assert [h.item_id for h in rerank_hits(reranker, None, fused_hits, 6)] == ids  # an image query
    assert [h.item_id for h in rerank_hits(reranker, "  ", fused_hits, 6)] == ids
    assert [h.item_id for h in rerank_hits(None, QUERY, fused_hits, 6)] == ids  # reranking off
    assert [h.item_id for h in reranker.rerank(QUERY, [_hit(1, None)], 6)] == [1]
    assert reranker.score(QUERY, []).shape == (0,)
    with pytest.raises(ValueError, match="top_n"):
        reranker.rerank(QUERY, fused_hits, 0)


def test_settings_default_off_and_off_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMRAG_RETRIEVE__RERANK", raising=False)
    assert load_settings(None).retrieve.rerank is None
    assert reranker_from_settings(load_settings(None).retrieve) is None
    for word in ("off", "None", ""):
        assert load_settings(None, retrieve={"rerank": word}).retrieve.rerank is None
    monkeypatch.setenv("MMRAG_RETRIEVE__RERANK", "cross-encoder/ms-marco-MiniLM-L6-v2")
    assert load_settings(None).retrieve.rerank == "cross-encoder/ms-marco-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="rerank_top_n"):
        load_settings(None, retrieve={"rerank_top_n": 0})


def test_a_model_that_cannot_load_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = Reranker(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ConfigError, match=r"cannot load reranker .*no-such-model.*retrieve\.rerank"):
        missing.score(QUERY, ["a passage"])
    with pytest.raises(ConfigError, match="model id or directory"):
        Reranker(" ")
