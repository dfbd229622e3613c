"""Every evaluation measures raw pixels and the encoder's starting point on its own queries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import evaluated_chain
from lookalike.artifacts.shared_root import read_manifest
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.encoder.checkpoint import load_encoder
from lookalike.stages.encoder.training import starting_point
from lookalike.stages.evaluation.baselines import pixel_vectors


@pytest.fixture(scope="module")
def untrained(tmp_path_factory, tiny_chain):
    root = tmp_path_factory.mktemp("baselines") / "artifacts"
    shutil.copytree(tiny_chain / "dataset", root / "dataset")
    return root, *evaluated_chain(root, **{"encoder.epochs": 0})


def test_the_starting_point_is_the_weights_training_began_with(untrained):
    root, encoder, _ = untrained
    exported, _ = load_encoder(root, encoder)  # epochs 0: exported as initialised
    rebuilt, spec = starting_point(encoder, root)
    assert spec.feature_dim == encoder.stats["spec"]["feature_dim"]
    for (name, a), b in zip(exported.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_untrained_encoder_scores_exactly_its_init_baseline(untrained):
    _, _, evaluation = untrained
    stats = evaluation.stats
    assert set(stats["baselines"]) == {"pixels", "init"}
    assert stats["gain"]["init"] == {"knn_accuracy": 0.0, "precision_at_10": 0.0, "map_at_10": 0.0}
    assert stats["baselines"]["pixels"]["what"] == "pixels 16x16"  # the encoder's input size, at most 32
    assert stats["gain"]["pixels"]["precision_at_10"] == pytest.approx(
        stats["precision_at_10"] - stats["baselines"]["pixels"]["precision_at_10"], abs=1e-6
    )


def test_the_baselines_are_whitened_like_the_index(tmp_path):
    """Over 100 images the index is whitened; an untrained encoder still scores exactly its init
    baseline, so the baseline went through the same whitening, learned the same way."""
    root = tmp_path / "artifacts"
    _, evaluation = evaluated_chain(root, **{"encoder.epochs": 0, "dataset.limit": 160})
    index = read_manifest(root, "index", evaluation.inputs["index"])
    assert index.stats["whitening"]["applied"] is True
    assert evaluation.stats["gain"]["init"] == {"knn_accuracy": 0.0, "precision_at_10": 0.0, "map_at_10": 0.0}


def test_pixel_vectors_are_the_fitted_images_flattened(tiny_chain):
    (folder,) = (tiny_chain / "dataset").glob("*/manifest.json")
    from lookalike.core.manifest import find_manifest

    snapshot = open_snapshot(tiny_chain, find_manifest(tiny_chain, "dataset", folder.parent.name))
    vectors = pixel_vectors(snapshot, 8)
    assert vectors.shape == (len(snapshot), 8 * 8 * 3) and vectors.dtype == np.float32
    assert 0 <= vectors.min() and vectors.max() <= 1


def test_baselines_can_be_turned_off(tmp_path, tiny_chain):
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_chain, root, ignore=shutil.ignore_patterns(".*.lock"))
    _, evaluation = evaluated_chain(root, **{"evaluation.baselines": []})
    assert "baselines" not in evaluation.stats and "gain" not in evaluation.stats
