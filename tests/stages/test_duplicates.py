"""Exact groups by sha256, near groups by range search, and the threshold calibrated on augmented copies."""

import faiss
import numpy as np
import pytest
from PIL import Image

from lookalike.stages.duplicates import (
    augmented_copy,
    calibrate_threshold,
    exact_groups,
    find_duplicates,
    index_space,
    near_groups,
    neighbour_pairs,
    pair_distances,
)
from lookalike.stages.index.capabilities import capabilities


def flat(vectors: np.ndarray, row_ids: np.ndarray, metric: str = "l2") -> faiss.Index:
    index = faiss.IndexIDMap2(
        faiss.IndexFlat(vectors.shape[1], faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    )
    index.add_with_ids(vectors, row_ids)
    return index


def clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """40 points spread out in 8 dims; rows 5, 6, 7 in a chain 0.1 apart (5-7 is 0.2 apart), row 20
    0.05 from row 30. Row ids have gaps, as a snapshot's do."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0, 10, (40, 8)).astype(np.float32)
    vectors[6] = vectors[5] + np.float32([0.1] + [0] * 7)
    vectors[7] = vectors[6] + np.float32([0.1] + [0] * 7)
    vectors[30] = vectors[20] + np.float32([0, 0.05] + [0] * 6)
    return vectors, np.arange(40, dtype=np.int64) * 3 + 1


def test_exact_groups_hold_rows_of_identical_sha256_largest_first():
    from datasets import Dataset

    snapshot = Dataset.from_dict({"row_id": [4, 1, 9, 7, 2, 8], "sha256": ["b", "a", "c", "a", "b", "a"]})
    assert exact_groups(snapshot) == [[1, 7, 8], [2, 4]]
    # the evaluation's sample: the groups holding a sampled row only, whole
    assert exact_groups(snapshot, holding=np.array([4, 9])) == [[2, 4]]
    assert exact_groups(snapshot, holding=np.array([9])) == []


def test_near_groups_join_rows_within_the_threshold_transitively():
    vectors, row_ids = clustered()
    index = flat(vectors, row_ids)
    # squared L2: 0.1 apart is 0.01; the chain 5-6-7 joins although 5 and 7 are 0.04 apart
    assert near_groups(index, vectors, row_ids, 0.011, "l2") == [[16, 19, 22], [61, 91]]
    assert near_groups(index, vectors, row_ids, 0.0026, "l2") == [[61, 91]]  # 0.05² = 0.0025 is within
    assert near_groups(index, vectors, row_ids, 0.0024, "l2") == []


def test_leader_linkage_keeps_every_member_within_the_threshold_of_the_first_row():
    vectors, row_ids = clustered()
    index = flat(vectors, row_ids)
    # 16-19 and 19-22 are 0.01 apart, 16-22 0.04: 16 leads and takes 19; 22 is left with no ungrouped neighbour
    assert near_groups(index, vectors, row_ids, 0.011, "l2", linkage="leader") == [[16, 19], [61, 91]]
    assert near_groups(index, vectors, row_ids, 0.05, "l2", linkage="leader") == [[16, 19, 22], [61, 91]]
    with pytest.raises(ValueError, match="linkage 'single'"):
        near_groups(index, vectors, row_ids, 0.05, "l2", linkage="single")


def test_near_groups_merge_exact_groups_in():
    vectors, row_ids = clustered()
    groups = near_groups(flat(vectors, row_ids), vectors, row_ids, 0.0026, "l2", exact=[[1, 91], [4, 118]])
    assert groups == [[1, 61, 91], [4, 118]]


def test_near_groups_read_an_inner_product_as_closer_when_higher():
    vectors, row_ids = clustered()
    faiss.normalize_L2(vectors)
    index = flat(vectors, row_ids, "ip")
    similarity = float(vectors[20] @ vectors[30])
    assert similarity > 0.99
    assert [61, 91] in near_groups(index, vectors, row_ids, similarity, "ip")  # the bound itself is within
    assert [61, 91] not in near_groups(index, vectors, row_ids, min(1.0, similarity + 1e-4), "ip")


def test_an_index_without_range_search_gives_its_nearest_neighbours_cut_at_the_threshold():
    vectors, row_ids = clustered()
    fast_scan = faiss.index_factory(8, "IDMap2,PQ4x4fs")
    fast_scan.train(np.repeat(vectors, 20, axis=0) + np.random.default_rng(1).normal(0, 1, (800, 8)).astype("f"))
    fast_scan.add_with_ids(vectors, row_ids)
    assert not capabilities(fast_scan).range_search
    distances, ids = fast_scan.search(vectors, 40)  # every row: the pairs a full search keeps
    threshold = float(np.quantile(distances[:, 1:4], 0.5))
    expected = {(int(own), int(r)) for own, d, f in zip(row_ids, distances, ids) for r in f[d <= threshold] if r != own}
    assert 0 < len(expected) and max(np.bincount([a for a, _ in expected])) < 20
    assert set(neighbour_pairs(fast_scan, vectors, row_ids, threshold, "l2")) == expected


def test_an_inner_product_refine_index_finds_the_pairs_exact_search_finds():
    """FAISS range-searches a refine's base index at radius x k_factor, which for a similarity asks for
    more than any pair reaches: the pairs come from the nearest neighbours instead."""
    vectors, row_ids = clustered()
    faiss.normalize_L2(vectors)
    refine = faiss.index_factory(8, "IDMap2,IVF2,PQ4x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    noisy = np.repeat(vectors, 20, axis=0) + np.random.default_rng(1).normal(0, 0.05, (800, 8)).astype("f")
    refine.train(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
    refine.add_with_ids(vectors, row_ids)
    faiss.ParameterSpace().set_index_parameter(refine, "nprobe", 2)
    faiss.ParameterSpace().set_index_parameter(refine, "k_factor_rf", 4)
    similarity = float(vectors[20] @ vectors[30])
    exact = near_groups(flat(vectors, row_ids, "ip"), vectors, row_ids, similarity - 0.01, "ip")
    assert [61, 91] in exact
    assert near_groups(refine, vectors, row_ids, similarity - 0.01, "ip") == exact


def test_distances_in_the_index_space_are_the_ones_a_whitened_index_returns():
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, (300, 16)).astype(np.float32) * np.linspace(0.1, 3, 16, dtype=np.float32)
    pca = faiss.PCAMatrix(16, 16, -0.25, False)
    pca.train(vectors)
    index = faiss.IndexPreTransform(pca, faiss.IndexIDMap2(faiss.IndexFlatL2(16)))
    index.add_with_ids(vectors, np.arange(300, dtype=np.int64))
    found, ids = index.search(vectors[:5], 2)
    space = index_space(index, vectors)
    assert np.allclose(pair_distances(space[:5], space[ids[:, 1]], "l2"), found[:, 1], rtol=1e-4, atol=1e-5)


def test_augmented_copies_are_seeded_and_keep_the_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    a = augmented_copy(image, np.random.default_rng(5))
    b = augmented_copy(image, np.random.default_rng(5))
    assert a.size == image.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(image))


def test_calibration_holds_95_percent_of_copies_unless_distinct_images_are_that_close(tiny_chain):
    from helpers import TINY

    from lookalike.core.settings import load_settings
    from lookalike.serving.refs import resolve_chain
    from lookalike.stages.dataset.stage import open_snapshot
    from lookalike.stages.index.factory import load_index
    from lookalike.stages.inference import Embedder

    chain = resolve_chain(load_settings({**TINY, "artifacts_root": str(tiny_chain)}))
    embedder = Embedder(tiny_chain, chain.encoder)
    snapshot, index = open_snapshot(tiny_chain, chain.dataset), load_index(tiny_chain, chain.index)
    cal = calibrate_threshold(embedder, snapshot, index, "l2", sample=40)
    copies, others = np.asarray(cal.copy_distances), np.asarray(cal.nearest_other_distances)
    assert cal.n_sample == len(copies) == 40 and len(others) == 40
    assert cal.copy_threshold == pytest.approx(np.quantile(copies, 0.95), abs=2e-6)
    assert cal.cap == pytest.approx(0.5 * np.median(others), abs=2e-6)
    assert cal.threshold == min(cal.copy_threshold, cal.cap)
    assert cal.copies_within == pytest.approx((copies <= cal.threshold).mean(), abs=1e-4)
    assert cal.nearest_other_within == pytest.approx((others <= cal.threshold).mean(), abs=1e-4)
    assert cal.why.startswith(f"{cal.threshold:.4g}: {cal.copies_within:.0%} of 40 augmented copies")
    assert calibrate_threshold(embedder, snapshot, index, "l2", sample=40) == cal  # seeded

    report = find_duplicates(tiny_chain, chain.dataset, chain.encoder, chain.embeddings, chain.index, threshold=0.0)
    assert report.calibration is None and report.exact_groups == [] and report.near_groups == []
    assert report.counts() == {
        "n_groups": 0,
        "n_exact_groups": 0,
        "n_near_groups": 0,
        "n_images_in_groups": 0,
        "n_images": 48,
    }


def test_duplicates_searched_from_a_sample_find_every_copy_of_the_sampled_rows(tiny_chain):
    """Above evaluation.sample_size only the sampled rows ask the whole index for their copies: a sampled
    row is grouped exactly when it is grouped over the whole collection, every group holds a sampled row,
    and searching from every row is the whole search."""
    from helpers import TINY

    from lookalike.core.settings import load_settings
    from lookalike.serving.refs import resolve_chain
    from lookalike.stages.embeddings.shards import load_embeddings
    from lookalike.stages.index.factory import load_index, prepare_vectors

    chain = resolve_chain(load_settings({**TINY, "artifacts_root": str(tiny_chain)}))
    args = (tiny_chain, chain.dataset, chain.encoder, chain.embeddings, chain.index)
    raw, ids = load_embeddings(tiny_chain, chain.embeddings)
    every = find_duplicates(*args, threshold=0.0)
    # a threshold that groups about half of the images: the median distance to the nearest other row
    distances, _ = load_index(tiny_chain, chain.index).search(prepare_vectors(raw, "l2"), 2)
    threshold = float(np.median(distances[:, 1]))
    whole = find_duplicates(*args, threshold=threshold, linkage="components")
    positions = np.arange(0, len(ids), 3)
    part = find_duplicates(*args, threshold=threshold, linkage="components", rows=positions)
    grouped = lambda report: {r for g in report.groups for r in g["rows"]}  # noqa: E731
    sampled = set(ids[positions].tolist())
    assert 4 <= len(grouped(whole)) < len(ids) and every.sampled is None
    assert grouped(part) & sampled == grouped(whole) & sampled and grouped(part) <= grouped(whole)
    assert all(set(g["rows"]) & sampled for g in part.groups)
    assert part.counts()["sampled"] == {"n": len(positions), "of": len(ids)} and part.n_images == 48
    assert find_duplicates(*args, threshold=threshold, linkage="components", rows=np.arange(len(ids))).groups == (
        whole.groups
    )
