"""index.type=auto: the choice under a memory budget and a recall target, and its report."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import lookalike.stages.index.auto as autoindex
from lookalike.core.settings import load_settings
from lookalike.stages.index.auto import candidates, choose_index
from lookalike.stages.index.factory import IndexBuildError, build_index


@pytest.fixture(scope="module")
def clustered():
    """3,000 vectors in 30 tight clusters, sparse row ids."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 64)).astype(np.float32) * 4
    vectors = centres[rng.integers(0, 30, 3000)] + 0.3 * rng.standard_normal((3000, 64)).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), np.arange(3000, dtype=np.int64) * 7 + 5


def section(**values):
    return load_settings({"index.type": "auto", **{f"index.{k}": v for k, v in values.items()}}).index


def flat_bytes(vectors) -> int:
    return faiss.serialize_index(build_index(vectors, np.arange(len(vectors)), autoindex.PRESETS["flat-l2"])).size


def test_estimates_are_within_one_percent_of_the_serialized_index(clustered):
    vectors, row_ids = clustered
    options, _ = candidates(*vectors.shape)
    assert [c.preset for c in options][:3] == ["flat-l2", "ivf-pqfs-rflat", "ivf-sq8"]  # exact first when small
    for cand in options:
        actual = faiss.serialize_index(build_index(vectors, row_ids, cand.kind)).size
        assert abs(cand.estimated_bytes - actual) <= 0.01 * actual, (cand.kind.factory, cand.estimated_bytes, actual)


def test_an_eighth_of_flat_chooses_a_compressed_index_and_reports_its_recall(clustered):
    vectors, row_ids = clustered
    budget = flat_bytes(vectors) // 8
    choice = choose_index(vectors, row_ids, section(memory_budget=budget))
    report = choice.report
    assert report["chosen"] == "ivf-pq" and "PQ" in choice.kind.factory
    assert faiss.serialize_index(choice.index).size <= budget
    assert choice.index.ntotal == len(vectors)  # the held-out vectors were added back
    assert 0 < report["heldout_recall_at_10"] <= 1 and report["holdout_queries"] == 300
    verdicts = {r["preset"]: r["verdict"] for r in report["candidates"] if r["preset"] != "ivf-pq"}
    assert all(v.startswith("over budget") for v in verdicts.values()), verdicts
    assert report["memory_budget"] == budget and report["recall_target"] == 0.95


def test_small_collections_without_a_budget_get_exact_search(clustered):
    vectors, row_ids = clustered
    choice = choose_index(vectors, row_ids, section())
    assert choice.report["chosen"] == "flat-l2" and choice.report["target_met"]
    assert choice.report["heldout_recall_at_10"] == 1.0
    assert len(choice.report["candidates"]) == 1  # the first candidate met the target: nothing else was built


def test_large_collections_take_the_fastest_candidate_that_reaches_the_target(clustered, monkeypatch):
    monkeypatch.setattr(autoindex, "EXACT_BELOW", 0)  # treat 3,000 vectors as a large collection
    vectors, row_ids = clustered
    choice = choose_index(vectors, row_ids, section(recall_target=0.9))
    report = choice.report
    tried = [r for r in report["candidates"] if "recall_at_10" in r]
    assert report["target_met"] and tried[-1]["verdict"] == "chosen"
    assert all(r["recall_at_10"] < 0.9 for r in tried[:-1])  # anything faster missed the target
    assert report["chosen"] != "flat-l2" and report["heldout_recall_at_10"] >= 0.9
    assert report["chosen"] in report["reason"] and "held-out" in report["reason"]
    assert set(choice.search_params) >= {"nprobe"} or report["chosen"] == "hnsw"


def test_a_target_nothing_reaches_keeps_the_best_and_says_so(clustered, monkeypatch):
    monkeypatch.setattr(autoindex, "EXACT_BELOW", 0)
    vectors, row_ids = clustered
    budget = flat_bytes(vectors) // 8  # compressed candidates only, and none is perfect
    choice = choose_index(vectors, row_ids, section(memory_budget=budget, recall_target=1.0))
    report = choice.report
    recalls = [r["recall_at_10"] for r in report["candidates"] if "recall_at_10" in r]
    assert not report["target_met"] and report["heldout_recall_at_10"] == max(recalls)
    assert "no candidate" in report["reason"]


def test_a_budget_nothing_fits_names_the_smallest_candidate(clustered):
    vectors, row_ids = clustered
    with pytest.raises(IndexBuildError, match=r"memory_budget=0\.0 MB is too small for 3000 vectors.*needs about"):
        choose_index(vectors, row_ids, section(memory_budget=1000))


def test_budget_accepts_units_and_is_in_the_key_only_for_auto():
    assert section(memory_budget="2MiB").memory_budget == 2 * 1024 * 1024
    plain = load_settings({"index.memory_budget": "2MB"}).index
    assert "memory_budget" not in plain.key_fields() and "memory_budget" in section().key_fields()
