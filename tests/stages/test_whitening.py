"""PCA whitening inside the index (lookalike.stages.index.whitening) and the baselines' same treatment."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lookalike.core.settings import load_settings
from lookalike.stages.evaluation.baselines import exact_neighbours
from lookalike.stages.index.factory import PRESETS, build_index, plan_factory
from lookalike.stages.index.whitening import MIN_VECTORS, fit_whitening


def nuisance_collection(n_per_class: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes 1 unit apart on axis 0, three nuisance axes with 3x that spread and 12 dims of
    small noise: raw L2 ranks by the nuisance, whitening evens the axes out."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    x = rng.normal(scale=0.05, size=(2 * n_per_class, 16))
    x[:, 0] += labels
    x[:, 1:4] = rng.normal(scale=3.0, size=(2 * n_per_class, 3))
    return x.astype(np.float32), labels


def precision_at_10(ids: np.ndarray, labels: np.ndarray) -> float:
    own = np.arange(len(labels))[:, None]
    hits = [(labels[row[row != o][:10]] == labels[o]).mean() for row, o in zip(ids, own[:, 0])]
    return float(np.mean(hits))


def test_whitening_finds_the_classes_a_nuisance_axis_hides_from_raw_distances():
    x, labels = nuisance_collection()
    row_ids = np.arange(len(x))
    raw = exact_neighbours(x, row_ids, x, "l2", 11)
    whitened = exact_neighbours(x, row_ids, x, "l2", 11, whitening=0.5)
    assert precision_at_10(raw, labels) < 0.65
    assert precision_at_10(whitened, labels) > 0.85


def test_the_written_index_carries_the_whitening_and_takes_raw_vectors():
    x, _ = nuisance_collection()
    row_ids = np.arange(len(x)) + 1000
    whitening = fit_whitening(x, 0.5)
    vectors = whitening.apply(x)
    kind = plan_factory(PRESETS["flat-l2"], *vectors.shape)
    index = faiss.deserialize_index(faiss.serialize_index(whitening.wrap(build_index(vectors, row_ids, kind))))
    _, found = index.search(x[:20], 1)
    assert found[:, 0].tolist() == row_ids[:20].tolist()  # raw queries are whitened by the index itself
    _, exact = index.search(x, 11)
    assert exact.tolist() == exact_neighbours(x, row_ids, x, "l2", 11, whitening=0.5).tolist()


@pytest.mark.parametrize(
    "power, dims, n, applied, why",
    [
        (0.5, 32, 400, True, "square-root PCA whitening learned from 400 vectors, 32 -> 32 dims"),
        (1.0, 32, 400, True, "full PCA whitening"),
        (0.0, 32, 400, False, "off (index.whitening=0)"),
        (0.5, 32, MIN_VECTORS - 1, False, f"{MIN_VECTORS - 1} vectors are too few"),
        (0.5, 300, 150, True, "300 -> 150 dims"),  # more dims than vectors (raw pixels): one axis per vector
    ],
)
def test_what_is_applied_and_why(power, dims, n, applied, why):
    x = np.random.default_rng(1).normal(size=(n, dims)).astype(np.float32)
    whitening = fit_whitening(x, power)
    assert whitening.applied is applied
    assert why in whitening.why
    out = whitening.apply(x)
    assert out.shape == (n, min(dims, n) if applied else dims)
    if applied:
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-4)


def test_axes_the_collection_never_uses_stay_finite():
    """A dead channel (all zeros) or a constant pixel has a zero eigenvalue: epsilon keeps it at zero."""
    x = np.random.default_rng(2).normal(size=(300, 16)).astype(np.float32)
    x[:, 3] = 0.0
    x[:, 7] = 5.0
    for power in (0.5, 1.0):
        out = fit_whitening(x, power).apply(x)
        assert np.isfinite(out).all()


def test_vectors_of_lower_rank_than_their_dimension_stay_finite_and_find_themselves():
    """A linear map into more dims than it has inputs (a distilled student's projection to its teacher's
    dim, 128 -> 256) leaves half the eigenvalues at zero, some a rounding error below it: epsilon, 1% of
    the mean eigenvalue on FAISS's own scale, must keep every axis finite."""
    rng = np.random.default_rng(3)
    features = np.maximum(rng.normal(loc=1.0, size=(1872, 128)), 0)  # pooled ReLU features
    x = (features @ rng.normal(scale=0.1, size=(128, 256)) + rng.normal(size=256)).astype(np.float32)
    for power in (0.5, 1.0):
        whitening = fit_whitening(x, power)
        eigenvalues = faiss.vector_to_array(whitening.chain[0].eigenvalues)
        out = whitening.apply(x)
        assert np.isfinite(out).all()
        assert whitening.chain[0].epsilon == pytest.approx(0.01 * eigenvalues[eigenvalues > 0].mean(), rel=1e-6)
        ids = exact_neighbours(x, np.arange(len(x)), x[:50], "l2", 1, whitening=power)
        assert (ids[:, 0] == np.arange(50)).all()


def test_cosine_indexes_are_whitened_too():
    x, labels = nuisance_collection()
    raw = exact_neighbours(x, np.arange(len(x)), x, "ip", 11)
    whitened = exact_neighbours(x, np.arange(len(x)), x, "ip", 11, whitening=0.5)
    assert precision_at_10(whitened, labels) > precision_at_10(raw, labels) + 0.1


def test_whitening_is_a_keyed_setting_with_a_clear_range():
    on = load_settings({}).index
    off = load_settings({"index.whitening": "0"}).index
    assert on.whitening == 0.5 and off.whitening == 0
    assert on.key_fields() != off.key_fields()
    with pytest.raises(ValueError, match="whitening"):
        load_settings({"index.whitening": "2"})


def test_whitening_in_place_a_chunk_at_a_time_gives_the_whole_arrays_result_in_the_same_buffer():
    x, _ = nuisance_collection()
    whiten = fit_whitening(x, 0.5)
    expected = whiten.apply(x)
    buffer = x.copy()
    out = whiten.apply_in_place(buffer, chunk=7)  # 400 rows: 57 chunks and a short last one
    assert out is buffer
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        whiten.apply_in_place(x.astype(np.float64))
