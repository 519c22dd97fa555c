"""VectorIndex on real FAISS: ids, layouts, persistence, corruption, model checks, threads."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmrag.errors import IndexCorruptError, MmragError, ModelMismatchError
from mmrag.index import IndexManifest, VectorIndex, VectorInputError, choose_nlist, gpu
from mmrag.index.vector_index import TRAIN_POINTS_PER_LIST, choose_nprobe, training_size
from mmrag.settings import IndexSettings

CLIP_MODEL = "open_clip:ViT-B-32/laion2b_s34b_b79k"
OTHER_MODEL = "open_clip:ViT-L-14/openai"
DIM = 32
SETTINGS = IndexSettings(use_gpu="never", ivf_min_items=1000, nprobe=8)
HNSW_SETTINGS = IndexSettings(use_gpu="never", ivf_min_items=1000, ann="hnsw", hnsw_m=16)


def unit_vectors(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def spaced_ids(count: int, start: int = 1000) -> np.ndarray:
    # Sparse, non-zero-based ids, like primary keys after deletions.
    return start + 7 * np.arange(count, dtype=np.int64)


def flat_index(count: int = 200, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    ids, vectors = spaced_ids(count), unit_vectors(count, seed=seed)
    index.add(ids, vectors)
    return index, ids, vectors


@pytest.fixture(scope="module")
def ivf_data() -> tuple[np.ndarray, np.ndarray]:
    return spaced_ids(5000), unit_vectors(5000, dim=64, seed=1)


def ivf_index(ivf_data: tuple[np.ndarray, np.ndarray], settings: IndexSettings = SETTINGS) -> VectorIndex:
    ids, vectors = ivf_data
    index = VectorIndex.create("clip", CLIP_MODEL, 64, settings)
    index.rebuild(ids, vectors)
    return index


def hnsw_index(ivf_data: tuple[np.ndarray, np.ndarray]) -> VectorIndex:
    """HNSW over the first 2,000 of the IVF data (graph building is the slow part)."""
    ids, vectors = ivf_data
    return ivf_index((ids[:2000], vectors[:2000]), HNSW_SETTINGS)


def assert_finds_itself(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
    scores, found = index.search(vectors, 3)
    np.testing.assert_array_equal(found[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


# ---- add / search / remove --------------------------------------------------------------------------


def test_search_returns_the_exact_vector_first_with_score_one() -> None:
    index, ids, vectors = flat_index()

    scores, found = index.search(vectors[:20], 5)

    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert scores.shape == found.shape == (20, 5)
    np.testing.assert_array_equal(found[:, 0], ids[:20])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores must be best first"
    assert len(index) == 200


def test_single_query_vector_is_a_batch_of_one() -> None:
    index, ids, vectors = flat_index()
    _, found = index.search(vectors[7], 2)
    assert found.shape == (1, 2) and found[0, 0] == ids[7]


def test_vectors_off_unit_length_are_normalised_so_scores_stay_cosine() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    vectors = unit_vectors(10)
    index.add(np.arange(10), 3.0 * vectors)

    scores, found = index.search(0.5 * vectors[4], 1)

    assert found[0, 0] == 4
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_remove_then_search_never_returns_removed_ids() -> None:
    index, ids, vectors = flat_index()
    gone = ids[::3]

    assert index.remove(gone) == len(gone)

    _, found = index.search(vectors, 10)
    assert not np.isin(found, gone).any()
    kept = np.setdiff1d(np.arange(len(ids)), np.arange(len(ids))[::3])
    assert_finds_itself(index, ids[kept], vectors[kept])
    assert len(index) == len(ids) - len(gone)
    np.testing.assert_array_equal(index.ids(), np.setdiff1d(ids, gone))
    assert index.remove(gone) == 0, "removing again removes nothing"
    assert index.remove(np.array([5, 6], dtype=np.int64)) == 0, "ids never added are skipped"


def test_removed_id_can_be_added_again_with_a_new_vector() -> None:
    index, ids, vectors = flat_index()
    replacement = unit_vectors(1, seed=99)

    index.remove(ids[:1])
    index.add(ids[:1], replacement)

    _, found = index.search(replacement, 1)
    assert found[0, 0] == ids[0]
    _, found = index.search(vectors[:1], 1)
    assert found[0, 0] != ids[0], "the old vector must be gone"


def test_ids_of_flat_index_are_sorted_and_complete() -> None:
    index = VectorIndex.create("text", "sentence-transformers:all-MiniLM-L6-v2", DIM, SETTINGS)
    index.add(np.array([50, 10, 30]), unit_vectors(3, seed=2))
    index.add(np.array([20, 40]), unit_vectors(2, seed=3))

    result = index.ids()
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, [10, 20, 30, 40, 50])
    result[0] = -5
    assert index.ids()[0] == 10, "ids() hands out a copy"


# ---- IVF --------------------------------------------------------------------------------------------


def test_rebuild_chooses_flat_below_and_ivf_from_the_threshold() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    vectors = unit_vectors(1000, seed=4)

    index.rebuild(spaced_ids(999), vectors[:999])
    assert index.manifest.index_type == "flat"

    index.rebuild(spaced_ids(1000), vectors)
    assert index.manifest.index_type == f"ivf{choose_nlist(1000)},flat"
    assert len(index) == 1000
    assert_finds_itself(index, spaced_ids(1000)[:50], vectors[:50])

    index.rebuild(spaced_ids(10), vectors[:10])
    assert index.manifest.index_type == "flat", "a rebuild shrinks back to flat"


def test_adding_past_the_threshold_does_not_convert_a_flat_index() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    index.add(spaced_ids(1200), unit_vectors(1200, seed=5))
    assert index.manifest.index_type == "flat"


def test_nlist_is_sqrt_half_n_with_enough_training_points() -> None:
    assert choose_nlist(1000) == 22 and choose_nlist(500) == 500 // 39  # tiny: 39 points per list at least
    assert (choose_nlist(100_000), choose_nlist(1_000_000)) == (224, 707)
    assert all(choose_nlist(n) * 39 <= n for n in (1000, 5000, 100_000, 10_000_000))
    assert choose_nlist(10**12) == 65536


def test_training_sample_is_sized_to_the_list_count() -> None:
    # FAISS wants 39-256 training points per centroid; the sample is 64 per list, never more than there is.
    assert TRAIN_POINTS_PER_LIST == 64
    assert training_size(1_000_000, 1000) == 64_000
    assert training_size(1000, 25) == 1000
    for count in (1000, 20_000, 100_000, 1_000_000):
        nlist = choose_nlist(count)
        assert 39 * nlist <= training_size(count, nlist) <= 256 * nlist


def test_nprobe_auto_searches_64_lists_or_all_of_fewer() -> None:
    assert (choose_nprobe(707), choose_nprobe(224), choose_nprobe(22)) == (64, 64, 22)
    assert (choose_nprobe(1000, setting=8), choose_nprobe(4, setting=8)) == (8, 4)  # a setting wins


def test_ivf_takes_the_auto_nprobe_and_keeps_recall_on_clustered_vectors() -> None:
    """Vectors around 400 centres (what embeddings of real documents look like, unlike uniform noise):
    the auto-sized IVF finds >= 95% of the exact top 10."""
    rng = np.random.default_rng(11)
    centres = unit_vectors(400, dim=64, seed=12)
    members = centres[rng.integers(0, 400, 40_000)] + 0.08 * rng.standard_normal((40_000, 64))
    vectors = (members / np.linalg.norm(members, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(40_000, dtype=np.int64)
    index = VectorIndex.create("clip", CLIP_MODEL, 64, IndexSettings(use_gpu="never", ivf_min_items=1000))
    index.rebuild(ids, vectors)
    nlist = choose_nlist(40_000)
    assert index.manifest.index_type == f"ivf{nlist},flat" and index._index.nprobe == choose_nprobe(nlist)
    queries = unit_vectors(200, dim=64, seed=13) * 0.3 + centres[rng.integers(0, 400, 200)]
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = faiss.IndexFlatIP(64)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    _, found = index.search(queries, 10)
    recall = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95


def test_ivf_ids_are_walked_from_the_inverted_lists(ivf_data, tmp_path: Path) -> None:
    ids, _ = ivf_data
    index = ivf_index(ivf_data)
    assert index.manifest.index_type.startswith("ivf")
    np.testing.assert_array_equal(index.ids(), ids)

    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, SETTINGS)  # rebuilds its id list from the index file itself
    np.testing.assert_array_equal(loaded.ids(), ids)


def test_ivf_remove_ids_keeps_the_right_ids(ivf_data) -> None:
    """An IndexIDMap around IVF returns shifted ids after remove_ids; the native IVF ids must not."""
    ids, vectors = ivf_data
    index = ivf_index(ivf_data)
    rng = np.random.default_rng(7)
    removed_rows = rng.choice(len(ids), size=500, replace=False)
    kept_rows = np.setdiff1d(np.arange(len(ids)), removed_rows)

    assert index.remove(ids[removed_rows]) == 500
    # Mixed removals and additions are what break an id mapping that renumbers.
    new_ids = np.arange(10**9, 10**9 + 100, dtype=np.int64)
    new_vectors = unit_vectors(100, dim=64, seed=8)
    index.add(new_ids, new_vectors)
    assert index.remove(ids[kept_rows[:50]]) == 50
    removed_rows = np.concatenate([removed_rows, kept_rows[:50]])
    kept_rows = kept_rows[50:]

    _, found = index.search(vectors[removed_rows], 10)
    assert not np.isin(found, ids[removed_rows]).any()
    assert_finds_itself(index, ids[kept_rows[::10]], vectors[kept_rows[::10]])
    assert_finds_itself(index, new_ids, new_vectors)
    assert len(index) == 5000 - 550 + 100
    np.testing.assert_array_equal(index.ids(), np.sort(np.concatenate([ids[kept_rows], new_ids])))


def test_ivf_refuses_duplicate_ids(ivf_data) -> None:
    ids, vectors = ivf_data
    index = ivf_index(ivf_data)
    with pytest.raises(VectorInputError, match="already in"):
        index.add(ids[:2], vectors[:2])
    assert len(index) == 5000


# ---- HNSW -------------------------------------------------------------------------------------------


def test_rebuild_builds_hnsw_when_asked_and_it_finds_every_vector(ivf_data) -> None:
    ids, vectors = ivf_data[0][:2000], ivf_data[1][:2000]
    index = hnsw_index(ivf_data)
    assert index.manifest.index_type == "hnsw16,flat" and index.device == "cpu"
    assert faiss.downcast_index(index._index.index).hnsw.efSearch == HNSW_SETTINGS.hnsw_ef_search
    assert_finds_itself(index, ids[::10], vectors[::10])
    new_ids, new_vectors = np.arange(10**9, 10**9 + 50, dtype=np.int64), unit_vectors(50, dim=64, seed=21)
    index.add(new_ids, new_vectors)
    assert_finds_itself(index, new_ids, new_vectors)
    assert len(index) == 2050
    index.rebuild(ids[:999], vectors[:999])
    assert index.manifest.index_type == "flat", "below the threshold a rebuild goes back to flat"


def test_hnsw_hides_removed_ids_keeps_them_hidden_on_disk_and_a_rebuild_drops_them(
    ivf_data, tmp_path: Path
) -> None:
    ids, vectors = ivf_data[0][:2000], ivf_data[1][:2000]
    index = hnsw_index(ivf_data)
    gone = ids[:300]
    assert index.remove(np.concatenate([gone, [10**12]])) == 300  # an unknown id is skipped
    assert len(index) == 1700 and index.manifest.count == 1700
    assert index._index.ntotal == 2000, "FAISS's HNSW cannot delete: the entries stay, hidden"
    _, found = index.search(vectors[:300], 20)
    assert not np.isin(found, gone).any() and (found >= 0).all()
    np.testing.assert_array_equal(index.ids(), ids[300:])
    # A removed id comes back with a new vector; its old entry stays hidden.
    replacement = unit_vectors(1, dim=64, seed=22)
    index.add(gone[:1], replacement)
    _, found = index.search(replacement, 1)
    assert found[0, 0] == gone[0]
    _, found = index.search(vectors[:1], 5)
    assert gone[0] not in found[0]

    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, HNSW_SETTINGS, expected_model_id=CLIP_MODEL, expected_dim=64)
    assert len(loaded) == 1701 and loaded.manifest.index_type == "hnsw16,flat"
    np.testing.assert_array_equal(loaded.ids(), np.sort(np.concatenate([gone[:1], ids[300:]])))
    _, found = loaded.search(vectors[1:300], 10)
    assert not np.isin(found, gone[1:]).any()

    loaded.rebuild(loaded.ids(), np.concatenate([replacement, vectors[300:]]))
    assert loaded._index.ntotal == len(loaded) == 1701


# ---- persistence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_keeps_ids_results_and_manifest(layout, ivf_data, tmp_path: Path) -> None:
    if layout == "flat":
        index, ids, vectors = flat_index()
    elif layout == "ivf":
        index, (ids, vectors) = ivf_index(ivf_data), ivf_data
    else:
        index, ids, vectors = hnsw_index(ivf_data), ivf_data[0][:2000], ivf_data[1][:2000]
    queries = vectors[:25]
    before_scores, before_ids = index.search(queries, 10)
    assert index.manifest.index_sha256 == ""

    index.save(tmp_path / "indexes" / "clip")

    directory = tmp_path / "indexes" / "clip"
    assert VectorIndex.exists(directory)
    loaded = VectorIndex.load(directory, SETTINGS, expected_model_id=CLIP_MODEL, expected_dim=index.dim)
    after_scores, after_ids = loaded.search(queries, 10)
    np.testing.assert_array_equal(after_ids, before_ids)
    np.testing.assert_allclose(after_scores, before_scores, atol=1e-6)
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids))

    manifest = loaded.manifest
    file_sha = hashlib.sha256((directory / "index.faiss").read_bytes()).hexdigest()
    assert manifest.index_sha256 == file_sha == index.manifest.index_sha256
    assert (manifest.space, manifest.model_id, manifest.dim, manifest.count) == (
        "clip",
        CLIP_MODEL,
        index.dim,
        len(ids),
    )
    assert manifest.index_type == index.manifest.index_type
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert on_disk["index_sha256"] == file_sha and on_disk["format_version"] == 1
    assert on_disk["metric"] == "inner_product"


def test_loaded_index_keeps_accepting_changes_and_saves_again(tmp_path: Path) -> None:
    index, ids, _ = flat_index()
    index.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, SETTINGS)

    loaded.add(np.array([1]), unit_vectors(1, seed=10))
    loaded.remove(ids[:5])
    loaded.save(tmp_path)

    reloaded = VectorIndex.load(tmp_path, SETTINGS)
    np.testing.assert_array_equal(reloaded.ids(), np.sort(np.concatenate([[1], ids[5:]])))


def test_exists_needs_both_files(tmp_path: Path) -> None:
    assert not VectorIndex.exists(tmp_path)
    flat_index()[0].save(tmp_path)
    assert VectorIndex.exists(tmp_path)
    (tmp_path / "manifest.json").unlink()
    assert not VectorIndex.exists(tmp_path)


def test_index_replaced_after_save_is_detected_as_torn(tmp_path: Path) -> None:
    """What a kill between the two renames leaves: a newer index file beside the older manifest."""
    index, _, _ = flat_index()
    index.save(tmp_path / "a")
    index.add(np.array([1, 2]), unit_vectors(2, seed=11))
    index.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "index.faiss", tmp_path / "a" / "index.faiss")

    with pytest.raises(IndexCorruptError, match="does not match its manifest"):
        VectorIndex.load(tmp_path / "a", SETTINGS)


def test_truncated_index_file_is_corrupt(tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)
    path = tmp_path / "index.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path, SETTINGS)


def test_truncated_file_whose_hash_matches_is_still_rejected_by_faiss(tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)
    truncated = (tmp_path / "index.faiss").read_bytes()[:100]
    (tmp_path / "index.faiss").write_bytes(truncated)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["index_sha256"] = hashlib.sha256(truncated).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(IndexCorruptError, match="cannot be read by faiss"):
        VectorIndex.load(tmp_path, SETTINGS)


def test_manifest_count_that_disagrees_with_the_index_is_corrupt(tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["count"] = 201
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(IndexCorruptError, match="200 vectors, manifest says 201"):
        VectorIndex.load(tmp_path, SETTINGS)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "index.faiss").unlink(),
        lambda d: (d / "manifest.json").unlink(),
        lambda d: (d / "manifest.json").write_text("{not json"),
        lambda d: (d / "manifest.json").write_text('{"space": "clip"}'),
    ],
    ids=["index-missing", "manifest-missing", "manifest-garbage", "manifest-incomplete"],
)
def test_missing_or_unreadable_files_are_corrupt(damage, tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)
    damage(tmp_path)
    with pytest.raises(IndexCorruptError):
        VectorIndex.load(tmp_path, SETTINGS)


def test_leftover_tmp_files_do_not_break_load_and_are_cleaned_on_save(tmp_path: Path) -> None:
    index, ids, _ = flat_index()
    index.save(tmp_path)
    (tmp_path / "index.faiss.tmp").write_bytes(b"half a write")
    (tmp_path / "manifest.json.tmp").write_text("{")

    loaded = VectorIndex.load(tmp_path, SETTINGS)
    np.testing.assert_array_equal(loaded.ids(), ids)

    loaded.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss", "manifest.json"]


# ---- model checks -----------------------------------------------------------------------------------


def test_other_model_id_is_a_model_mismatch_naming_both(tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)

    with pytest.raises(ModelMismatchError) as caught:
        VectorIndex.load(tmp_path, SETTINGS, expected_model_id=OTHER_MODEL, expected_dim=768)

    message = str(caught.value)
    assert CLIP_MODEL in message and OTHER_MODEL in message
    assert f"dim {DIM}" in message and "dim 768" in message
    assert str(tmp_path) in message and "new collection" in message


def test_other_dimension_is_a_model_mismatch(tmp_path: Path) -> None:
    flat_index()[0].save(tmp_path)
    with pytest.raises(ModelMismatchError, match="dim 64"):
        VectorIndex.load(tmp_path, SETTINGS, expected_model_id=CLIP_MODEL, expected_dim=64)


def test_model_mismatch_is_reported_even_when_the_index_file_is_torn(tmp_path: Path) -> None:
    # The configuration problem is the one the user must fix first; a rebuild would not help.
    flat_index()[0].save(tmp_path)
    (tmp_path / "index.faiss").write_bytes(b"torn")
    with pytest.raises(ModelMismatchError):
        VectorIndex.load(tmp_path, SETTINGS, expected_model_id=OTHER_MODEL)


# ---- padding and bad input --------------------------------------------------------------------------


def test_k_larger_than_the_index_is_padded() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    vectors = unit_vectors(3)
    index.add(np.array([11, 12, 13]), vectors)

    scores, found = index.search(vectors[:2], 5)

    assert found.shape == scores.shape == (2, 5)
    assert set(found[0, :3]) == {11, 12, 13}
    assert (found[:, 3:] == -1).all()
    assert np.isneginf(scores[:, 3:]).all()
    assert np.isfinite(scores[:, :3]).all()


def test_empty_index_search_returns_only_padding() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    scores, found = index.search(unit_vectors(2), 4)
    assert found.shape == (2, 4) and (found == -1).all()
    assert np.isneginf(scores).all()


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (np.array([1, 2]), unit_vectors(2, dim=DIM + 1), r"shape \(n, 32\)"),
        (np.array([1, 2]), unit_vectors(2).reshape(-1), r"shape \(n, 32\)"),
        (np.array([1, 2]), np.vstack([unit_vectors(1), np.full((1, DIM), np.nan)]), "rows 1 contain NaN"),
        (np.array([1, 2]), np.vstack([np.full((1, DIM), np.inf), unit_vectors(1)]), "rows 0 contain NaN"),
        (np.array([1, 2]), np.zeros((2, DIM)), "all zeros"),
        (np.array([1, 1]), unit_vectors(2), "repeated within one batch: 1"),
        (np.array([1, -1]), unit_vectors(2), "non-negative"),
        (np.array([1.0, 2.0]), unit_vectors(2), "must be integers"),
        (np.array([1, 2, 3]), unit_vectors(2), "3 ids for 2 vectors"),
        (np.array([[1, 2]]), unit_vectors(2), "1-D"),
        (np.array([1, 2]), [["a"] * DIM] * 2, "numeric array"),
    ],
    ids=["dim", "1-d", "nan", "inf", "zero", "dup", "negative", "float-ids", "lengths", "2-d-ids", "text"],
)
def test_bad_input_is_rejected_with_a_clear_error(ids, vectors, message) -> None:
    index, _, _ = flat_index(10)
    with pytest.raises(VectorInputError, match=message) as caught:
        index.add(ids, vectors)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MmragError)
    assert len(index) == 10, "a rejected batch adds nothing"


def test_adding_an_id_already_present_is_rejected_and_names_it() -> None:
    index, ids, _ = flat_index(10)
    with pytest.raises(VectorInputError, match=f"already in the 'clip' index: {ids[3]}"):
        index.add(np.array([1, ids[3]]), unit_vectors(2, seed=12))
    assert len(index) == 10 and 1 not in index.ids()


def test_bad_queries_and_k_are_rejected() -> None:
    index, _, vectors = flat_index(10)
    with pytest.raises(VectorInputError, match="shape"):
        index.search(unit_vectors(1, dim=DIM * 2), 3)
    with pytest.raises(VectorInputError, match="NaN"):
        index.search(np.full((1, DIM), np.nan), 3)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(VectorInputError, match="k must be"):
            index.search(vectors[:1], bad_k)


def test_create_rejects_a_bad_dimension() -> None:
    with pytest.raises(VectorInputError, match="dimension"):
        VectorIndex.create("clip", CLIP_MODEL, 0, SETTINGS)


def test_manifest_tracks_changes() -> None:
    index = VectorIndex.create("clip", CLIP_MODEL, DIM, SETTINGS)
    first = index.manifest
    assert isinstance(first, IndexManifest)
    assert (first.count, first.index_type, first.metric) == (0, "flat", "inner_product")
    assert first.format_version == 1
    index.add(np.array([3]), unit_vectors(1))
    assert index.manifest.count == 1


# ---- GPU --------------------------------------------------------------------------------------------


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="a faiss GPU build may find a GPU")
def test_gpu_probe_says_no_once_and_never_is_not_probed(monkeypatch, caplog) -> None:
    monkeypatch.setattr(gpu, "_probe_result", None)  # forget any earlier probe in this process
    caplog.set_level(logging.INFO, logger="mmrag.index.gpu")

    never = VectorIndex.create("clip", CLIP_MODEL, DIM, IndexSettings(use_gpu="never"))
    assert never.device == "cpu"
    assert gpu._probe_result is None, 'use_gpu="never" must not probe'

    auto = [VectorIndex.create("clip", CLIP_MODEL, DIM, IndexSettings(use_gpu="auto")) for _ in range(2)]
    assert [index.device for index in auto] == ["cpu", "cpu"]
    assert gpu.gpu_available() is False
    unavailable = [r.getMessage() for r in caplog.records if "FAISS GPU unavailable" in r.getMessage()]
    assert len(unavailable) == 1 and unavailable[0].endswith("; using CPU")

    index = auto[0]
    ids, vectors = spaced_ids(20), unit_vectors(20)
    index.add(ids, vectors)
    assert_finds_itself(index, ids, vectors)


# ---- threads ----------------------------------------------------------------------------------------


def test_searches_while_another_thread_adds_stay_consistent(tmp_path: Path) -> None:
    index, base_ids, base_vectors = flat_index(300)
    new_ids = np.arange(10**6, 10**6 + 1000, dtype=np.int64)
    new_vectors = unit_vectors(1000, seed=13)
    known = set(base_ids.tolist()) | set(new_ids.tolist())
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for start in range(0, 1000, 50):
                index.add(new_ids[start : start + 50], new_vectors[start : start + 50])
                if start == 500:
                    index.save(tmp_path)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    rounds = 0
    while writer.is_alive() or rounds < 5:
        rows = np.arange(rounds % 30, 300, 30)
        scores, found = index.search(base_vectors[rows], 8)
        np.testing.assert_array_equal(found[:, 0], base_ids[rows])
        assert set(found.ravel().tolist()) <= known
        assert all(len(set(row)) == len(row) for row in found.tolist())
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        rounds += 1
    writer.join()

    assert not errors, errors
    assert len(index) == 1300
    np.testing.assert_array_equal(index.ids(), np.sort(np.concatenate([base_ids, new_ids])))
    assert_finds_itself(index, new_ids[::50], new_vectors[::50])
    saved = VectorIndex.load(tmp_path, SETTINGS)  # the mid-ingest snapshot is a consistent pair
    assert len(saved) == len(saved.ids()) and 300 < len(saved) < 1300


@pytest.mark.parametrize("layout", ["flat", "ivf", "hnsw"])
def test_a_search_among_allowed_ids_returns_k_of_them_on_every_layout(layout: str) -> None:
    """The IDSelector push-down: flat is exact; IVF probing too few lists retries over every list; HNSW
    falls back to exact search among the allowed ids when its graph walk misses some, and never returns
    a removed (hidden) entry."""
    settings = IndexSettings(ivf_min_items=1000, nprobe=1, ann="ivf" if layout != "hnsw" else "hnsw")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(4000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 4010, dtype=np.int64)
    allowed = ids[::400]  # 10 ids, scattered over the lists
    index = VectorIndex.create(
        "clip.image",
        "m",
        16,
        settings.model_copy(update={"ivf_min_items": 100_000 if layout == "flat" else 1000}),
    )
    index.rebuild(ids, vectors)
    assert index.manifest.index_type.startswith(layout)
    if layout == "hnsw":  # removed entries stay in the graph with id -1
        index.remove(ids[1::400])
        _, found = index.search(vectors[5], 10, allowed=np.concatenate([allowed, ids[1::400]]))
        assert sorted(found[0].tolist()) == sorted(allowed.tolist())
    scores, found = index.search(vectors[5], 10, allowed=allowed)
    assert sorted(found[0].tolist()) == sorted(allowed.tolist())
    exact = np.sort(vectors[allowed - 10] @ vectors[5])[::-1]
    assert np.allclose(scores[0], exact, atol=1e-5)
    _, fewer = index.search(vectors[5], 3, allowed=np.asarray([12, 13, 999_999]))
    assert fewer[0].tolist()[:2] in ([12, 13], [13, 12]) and fewer[0][2] == -1
