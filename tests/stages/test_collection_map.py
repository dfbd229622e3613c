"""The map's projection: t-SNE keeps neighbours together, the same vectors give the same map.
(The map in a real evaluation folder and W&B: tests/stages/test_leaks.py and tests/e2e/test_flow.py.)"""

from __future__ import annotations

import numpy as np

from lookalike.stages.evaluation.collection_map import principal_components, tsne


def clusters(n_per: int = 60, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 tight clusters whose centres differ in dimensions PCA ranks below a wide noise direction."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dim)) * 3
    x = np.concatenate([c + 0.3 * rng.standard_normal((n_per, dim)) for c in centres])
    x[:, 0] += 10 * rng.standard_normal(len(x))  # the widest direction is noise
    return x.astype(np.float32), np.repeat(np.arange(4), n_per)


def nearest_share_label(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """The share of each point's k nearest other points that carry its label."""
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[np.argsort(d, 1)[:, :k]] == labels[:, None]).mean())


def test_tsne_keeps_clusters_that_the_widest_directions_hide():
    x, labels = clusters()
    assert nearest_share_label(x, labels) == 1.0  # in all 32 dimensions the clusters are pure
    assert nearest_share_label(principal_components(x)[0][:, :2], labels) < 0.85
    assert nearest_share_label(tsne(x), labels) > 0.97


def test_the_same_vectors_give_the_same_map_and_tiny_inputs_still_map():
    x, _ = clusters(n_per=10)
    assert np.array_equal(tsne(x), tsne(x.copy()))
    assert tsne(x[:1]).shape == (1, 2) and tsne(x[:2]).shape == (2, 2) and tsne(x[:5]).shape == (5, 2)
    assert np.isfinite(tsne(np.repeat(x[:1], 6, axis=0))).all()  # identical vectors: no NaN
