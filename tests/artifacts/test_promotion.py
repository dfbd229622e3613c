"""The promotion gate holds an encoder to its baselines: raw pixels and its own starting point."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lookalike.artifacts.promotion import promotion_decision
from lookalike.core.manifest import Manifest
from lookalike.core.settings import PromotionSettings

INDEX = SimpleNamespace(key="f" * 16, stats={"self_retrieval_at_1": 1.0, "recall_at_10": 1.0})


def evaluation(precision: float, pixels: float | None, init: float | None, teacher: float | None = None) -> Manifest:
    measured = {
        name: {"what": name, "precision_at_10": value}
        for name, value in (("pixels", pixels), ("init", init), ("teacher", teacher))
        if value is not None
    }
    return Manifest(
        stage="evaluation",
        key="e" * 16,
        code_version=3,
        created="",
        settings={},
        inputs={"index": INDEX.key},
        files=[],
        stats={"k": 10, "precision_at_10": precision, "baselines": measured},
    )


def test_the_gate_refuses_an_encoder_that_does_not_beat_its_starting_point(tmp_path):
    decision = promotion_decision(PromotionSettings(), tmp_path, INDEX, evaluation(0.40, pixels=0.30, init=0.45))
    assert not decision["promoted"]
    assert decision["reasons"] == [
        "precision_at_10 0.4000 is -0.0500 over the init baseline's 0.4500 (init); promotion.min_gain_over_init is 0.0"
    ]
    assert decision["checks"]["gain_over_init"] == [-0.05, 0.0] and decision["checks"]["gain_over_pixels"] == [0.1, 0.0]


def test_the_gate_refuses_an_encoder_worse_than_raw_pixels_unless_a_margin_allows_it(tmp_path):
    worse = evaluation(0.40, pixels=0.42, init=0.20)
    refused = promotion_decision(PromotionSettings(), tmp_path, INDEX, worse)
    assert not refused["promoted"] and "promotion.min_gain_over_pixels" in refused["reasons"][0]
    assert promotion_decision(PromotionSettings(min_gain_over_pixels=-0.05), tmp_path, INDEX, worse)["promoted"]


def test_a_margin_demands_a_real_gain(tmp_path):
    slight = evaluation(0.40, pixels=0.39, init=0.20)
    assert promotion_decision(PromotionSettings(), tmp_path, INDEX, slight)["promoted"]  # default: not worse
    assert not promotion_decision(PromotionSettings(min_gain_over_pixels=0.03), tmp_path, INDEX, slight)["promoted"]


@pytest.mark.parametrize("pixels, init", [(None, None), (0.5, None)])
def test_baselines_that_were_not_measured_are_reported_not_held_against_the_run(tmp_path, pixels, init):
    decision = promotion_decision(PromotionSettings(), tmp_path, INDEX, evaluation(0.40, pixels, init))
    assert decision["checks"]["gain_over_init"].startswith("not measured")
    assert decision["promoted"] == (pixels is None)


def test_production_numbers_that_fail_their_hash_are_not_compared_and_do_not_stop_a_good_run(tmp_path, tiny_chain):
    """Production's evaluation edited (or its folder rebuilt) since it was promoted: the gate says it did
    not compare with it, instead of failing the run that would replace it."""
    import json
    import shutil

    from helpers import TINY

    from lookalike.artifacts.aliases import set_alias
    from lookalike.core.manifest import find_manifest
    from lookalike.core.settings import load_settings
    from lookalike.stages.evaluation.stage import run_evaluation_stage

    root = tmp_path / "artifacts"
    shutil.copytree(tiny_chain, root, ignore=shutil.ignore_patterns(".*.lock"))
    keys = {
        stage: next((root / stage).glob("*/manifest.json")).parent.name
        for stage in ("dataset", "encoder", "embeddings", "index")
    }
    manifests = {stage: find_manifest(root, stage, key) for stage, key in keys.items()}
    settings = load_settings({**TINY, "evaluation.query_split": "none", "artifacts_root": str(root)})
    evaluation = run_evaluation_stage(
        settings.evaluation, manifests["dataset"], manifests["embeddings"], manifests["index"], root
    ).manifest
    set_alias(root, "production", {**keys, "evaluation": evaluation.key})
    path = root / "evaluation" / evaluation.key / "manifest.json"
    edited = json.loads(path.read_text())
    edited["stats"]["knn_accuracy"] = 1.0  # would make any new run look worse
    path.write_text(json.dumps(edited))

    decision = promotion_decision(settings.promotion, root, manifests["index"], evaluation)
    assert decision["checks"]["knn_accuracy"].startswith("not compared with production's: ")
    assert "does not match the sha256" in decision["checks"]["knn_accuracy"]
    assert decision["production"] == keys["index"] and decision["promoted"]


def test_a_student_is_held_to_a_fraction_of_its_teacher_when_asked(tmp_path):
    student = evaluation(0.80, pixels=0.30, init=0.20, teacher=0.88)  # keeps 0.909 of the teacher
    assert promotion_decision(PromotionSettings(), tmp_path, INDEX, student)["promoted"]  # default: not checked
    decision = promotion_decision(PromotionSettings(min_teacher_fraction=0.95), tmp_path, INDEX, student)
    assert not decision["promoted"] and decision["checks"]["teacher_fraction"] == [0.9091, 0.95]
    assert decision["reasons"] == [
        "precision_at_10 0.8000 keeps 0.909 of the teacher's 0.8800 (teacher); promotion.min_teacher_fraction is 0.95"
    ]
    assert promotion_decision(PromotionSettings(min_teacher_fraction=0.9), tmp_path, INDEX, student)["promoted"]


def test_the_gate_compares_on_the_clean_numbers_when_queries_leak(tmp_path):
    """Leaked queries find their own copies and flatter every model alike; on the clean queries this
    encoder falls below its starting point, and the gate says so, naming the clean queries."""
    leaky = evaluation(0.80, pixels=0.70, init=0.75)
    leaky.stats["baselines"]["pixels"]["clean"] = {"precision_at_10": 0.30, "n_queries": 6}
    leaky.stats["baselines"]["init"]["clean"] = {"precision_at_10": 0.45, "n_queries": 6}
    leaky.stats.update(
        n_queries=10,
        leaks={"n_leaked": 4, "exact": 1, "near": 3, "threshold": 0.01, "why": "calibrated"},
        clean={"precision_at_10": 0.40, "n_queries": 6},
    )
    decision = promotion_decision(PromotionSettings(), tmp_path, INDEX, leaky)
    assert decision["reasons"] == [
        "precision_at_10 0.4000 is -0.0500 over the init baseline's 0.4500 (init) on the clean queries; "
        "promotion.min_gain_over_init is 0.0"
    ]
    assert decision["checks"]["scored_on"] == "clean queries: 4 of 10 leak (1 exact, 3 near)"
    leaky.stats["leaks"]["n_leaked"] = 0  # nothing leaked: the raw numbers, which pass
    assert promotion_decision(PromotionSettings(), tmp_path, INDEX, leaky)["promoted"]


def test_against_production_the_gate_compares_clean_knn_accuracy_when_queries_leak(tmp_path, monkeypatch):
    """Raw kNN accuracy equal to production's, but 0.10 lower on the clean queries: refused."""
    from lookalike.artifacts import promotion

    def leaky(knn: float, clean_knn: float) -> Manifest:
        made = evaluation(0.80, pixels=0.10, init=0.10)
        made.stats.update(
            knn_accuracy=knn,
            protocol="held-out:test",
            n_queries=10,
            leaks={"n_leaked": 2, "exact": 2, "near": 0, "threshold": 0.01, "why": "calibrated"},
            clean={"knn_accuracy": clean_knn, "precision_at_10": 0.80, "n_queries": 8},
        )
        for measured in made.stats["baselines"].values():
            measured["clean"] = {"precision_at_10": 0.10, "n_queries": 8}
        return made.model_copy(update={"inputs": {"index": "p" * 16, "queries": "q" * 16}})

    monkeypatch.setattr(promotion, "_production_evaluation", lambda root: leaky(0.70, 0.65))
    run = leaky(0.70, 0.55).model_copy(update={"inputs": {"index": INDEX.key, "queries": "q" * 16}})
    decision = promotion_decision(PromotionSettings(max_knn_drop=0.05), tmp_path, INDEX, run)
    assert decision["checks"]["knn_accuracy"] == [0.55, 0.65, 0.05]
    assert (
        not decision["promoted"] and "knn_accuracy 0.5500 is 0.1000 below production's 0.6500" in decision["reasons"][0]
    )
