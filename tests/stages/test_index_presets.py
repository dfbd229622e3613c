"""FAISS presets on enough vectors to train IVF/PQ: sizing from N, search knobs, round trips."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lookalike.stages.index.factory import (
    PRESETS,
    IndexBuildError,
    IndexType,
    apply_search_params,
    build_index,
    choose_nlist,
    choose_pq,
    plan_factory,
    prepare_vectors,
    recall_vs_exact,
    sample_queries,
    search_params_for,
    self_retrieval_at_1,
)


@pytest.fixture(scope="module")
def clustered():
    """3,000 vectors in 30 tight clusters (like embeddings of 30 kinds of thing), sparse row ids."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 64)).astype(np.float32) * 4
    vectors = centres[rng.integers(0, 30, 3000)] + rng.standard_normal((3000, 64)).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), np.arange(3000, dtype=np.int64) * 7 + 5


def concrete(name: str, n: int, dim: int) -> IndexType:
    preset = PRESETS[name]
    return plan_factory(preset, n, dim, preset=name)


def test_nlist_follows_faiss_guidance():
    assert choose_nlist(3000) == 3000 // 39  # 39 points per centroid binds below ~24k vectors
    assert choose_nlist(1_000_000) == 4000  # 4·sqrt(N)
    with pytest.raises(IndexBuildError, match="needs at least 156 vectors"):
        choose_nlist(100)


def test_pq_code_is_a_sixteenth_of_float32_and_bits_shrink_for_small_n():
    assert choose_pq(100_000, 512) == (128, 8)
    assert choose_pq(3000, 512) == (128, 6)  # 3000/39 = 76 points -> 2**6 centroids
    assert choose_pq(70_000, 784) == (196, 8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_round_trips_with_its_knobs_and_finds_itself(clustered, tmp_path, name):
    vectors, row_ids = clustered
    kind = concrete(name, *vectors.shape)
    vectors = prepare_vectors(vectors, kind.metric)
    index = build_index(vectors, row_ids, kind)
    # Isotropic noise inside clusters is 4-bit PQ's worst case: re-rank 16x candidates there.
    params = search_params_for(index, nprobe=16, ef_search=64, k_factor=16)
    expected = {"nprobe"} if name.startswith("ivf") else {"efSearch"} if name == "hnsw" else set()
    assert set(params) == expected | ({"k_factor_rf"} if name.endswith("rflat") else set())
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    loaded = faiss.read_index(str(tmp_path / "i.faiss"))
    apply_search_params(loaded, params)
    if "nprobe" in params:
        assert faiss.extract_index_ivf(loaded).nprobe == 16
    if "k_factor_rf" in params:  # the refine wrapper sits inside the IndexIDMap2 that maps row ids
        assert faiss.downcast_index(faiss.downcast_index(loaded).index).k_factor == 16
    queries = sample_queries(len(vectors))
    _, found = loaded.search(vectors[:20], 5)
    assert set(found.ravel()) <= set(row_ids.tolist())
    self_at_1 = self_retrieval_at_1(loaded, vectors[queries], row_ids[queries])
    assert self_at_1 == 1.0 if kind.exact else self_at_1 >= 0.99
    recall = recall_vs_exact(loaded, vectors, row_ids, queries, kind, 10)
    assert recall == 1.0 if kind.exact else 0.3 <= recall <= 1.0


def test_more_probes_find_more_true_neighbours(clustered):
    vectors, row_ids = clustered
    kind = IndexType("IVF76,Flat", "l2", exact=False)
    index = build_index(vectors, row_ids, kind)
    queries = sample_queries(len(vectors))[:500]
    recalls = []
    for nprobe in (1, 76):
        apply_search_params(index, {"nprobe": nprobe})
        recalls.append(recall_vs_exact(index, vectors, row_ids, queries, kind, 10))
    assert recalls[0] < recalls[1] == 1.0  # probing every list is exact search


SAMPLE_IMAGES = 700  # enough to train every preset (4-bit PQ needs 624), seconds to embed


@pytest.fixture(scope="module")
def sample_embeddings(tmp_path_factory):
    """Embeddings of 700 bundled sample images (random-init encoder: no training needed)."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage

    root = tmp_path_factory.mktemp("sample") / "artifacts"
    settings = load_settings(
        {"dataset.limit": SAMPLE_IMAGES, "encoder.epochs": 0, "encoder.input_size": 16, "artifacts_root": str(root)}
    )
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    return settings, root, run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_on_the_sample_returns_row_ids_and_finds_itself(sample_embeddings, name):
    from lookalike.stages.embeddings.shards import load_embeddings
    from lookalike.stages.index.factory import load_index, search
    from lookalike.stages.index.stage import run_index_stage

    settings, root, embeddings = sample_embeddings
    stats = run_index_stage(settings.index.model_copy(update={"type": name}), embeddings, root).manifest
    index = load_index(root, stats)  # read back from index.faiss, sha256-checked, knobs applied
    stats = stats.stats
    vectors, row_ids = load_embeddings(root, embeddings)
    _, found = search(index, prepare_vectors(vectors[:50], stats["metric"]), 5)
    assert set(found.ravel()) <= set(row_ids.tolist()) and stats["ntotal"] == SAMPLE_IMAGES
    assert stats["self_retrieval_at_1"] == 1.0 if stats["exact"] else stats["self_retrieval_at_1"] >= 0.99
