"""The promotion gate holds an encoder to its baselines: raw pixels and its own starting point."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lookalike.artifacts.promotion import promotion_decision
from lookalike.core.manifest import Manifest
from lookalike.core.settings import PromotionSettings

INDEX = SimpleNamespace(key="f" * 16, stats={"self_retrieval_at_1": 1.0, "recall_at_10": 1.0})


def evaluation(precision: float, pixels: float | None, init: float | None) -> Manifest:
    measured = {
        name: {"what": name, "precision_at_10": value}
        for name, value in (("pixels", pixels), ("init", init))
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
