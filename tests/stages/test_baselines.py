"""Every evaluation measures raw pixels and the encoder's starting point on its own queries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import TINY, evaluated_chain

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


@pytest.mark.parametrize("query_split", ["auto", "none"])
def test_on_a_sample_the_run_and_its_baselines_search_the_same_rows(untrained, query_split):
    """evaluation.sample_size 20 of TINY's 48 images: the baselines embed those 20 only, the run's index is
    searched over the same 20 (an untrained encoder still scores exactly its init baseline), the leave-one-out
    queries are drawn from them, and the map too; the duplicate groups are those of the 20, searched in all 48."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.evaluation.stage import run_evaluation_stage

    root, _, whole = untrained
    assert "sampled" not in whole.stats and whole.stats["baselines"]["pixels"]["n_indexed"] == 48
    changes = {"encoder.epochs": 0, "evaluation.sample_size": 20}
    _, evaluation = evaluated_chain(root, **changes)  # held-out queries, the chain's stages reused
    if query_split == "none":
        dataset, index = (read_manifest(root, s, evaluation.inputs[s]) for s in ("dataset", "index"))
        embeddings = read_manifest(root, "embeddings", index.inputs["embeddings"])
        section = load_settings({**TINY, **changes, "evaluation.query_split": "none"}).evaluation
        evaluation = run_evaluation_stage(section, dataset, embeddings, index, root).manifest
    stats = evaluation.stats
    assert stats["sampled"] == {"n": 20, "of": 48}
    assert {name: m["n_indexed"] for name, m in stats["baselines"].items()} == {"pixels": 20, "init": 20}
    assert stats["gain"]["init"] == {"knn_accuracy": 0.0, "precision_at_10": 0.0, "map_at_10": 0.0}
    assert stats["n_queries"] == (64 if query_split == "auto" else 20)
    assert stats["map"]["n_rows"] == 20 and stats["duplicates"]["n_images"] == 48
    assert stats["duplicates"]["sampled"] == {"n": 20, "of": 48}


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
