"""tasks/report.py without a Prefect server: what the run's artifacts hold. Prefect's artifact calls are
recorded here instead of sent; the markdown's sentences: tests/reporting/test_summary.py."""

from __future__ import annotations

import base64
import json

import pytest

import lookalike.tasks.report as report


@pytest.fixture
def published(monkeypatch) -> dict[str, dict]:
    """Each artifact the task made, by its key: its kind and the arguments Prefect got."""
    made: dict[str, dict] = {}

    def recorder(kind: str):
        def create(content, key: str, description: str | None = None) -> None:
            assert key not in made, f"artifact {key} made twice"
            made[key] = {"kind": kind, "content": content, "description": description}

        return create

    for kind in ("markdown", "table", "image"):
        monkeypatch.setattr(report, f"create_{kind}_artifact", recorder(kind))
    return made


def summary(tmp_path, **extra) -> dict:
    return {
        "stages": {"index": {"key": "ab12", "status": "computed", "seconds": 1.25}},
        "metrics": {"knn_accuracy": 0.75, "precision_at_10": 0.5},
        "artifacts": {"retrieval_grid": None, "map": None, "duplicates": None},
        **extra,
    }


def test_the_metrics_table_holds_the_runs_scores_and_those_beside_them(published, tmp_path):
    report.publish_report.fn(
        summary(
            tmp_path,
            baselines={"pixels": {"knn_accuracy": 0.5, "clean": {"knn_accuracy": 0.4}}},
            gain={"pixels": {"knn_accuracy": 0.25}},
            distillation={
                "teacher": "lookalike:teacher",
                "fraction": {"knn_accuracy": 0.9},
                "images_per_second": {"student": 700.0, "teacher": 200.0},
                "speedup": 3.5,
                "speed_images": 64,
            },
            clean={"knn_accuracy": 0.7, "gain": {"pixels": 0.2}},
            leaks={"n_leaked": 2, "exact": 1, "near": 1, "why": "0.002: ..."},
        )
    )
    assert published["retrieval-summary"]["kind"] == "markdown"
    assert "| index | `ab12` | computed |" in published["retrieval-summary"]["content"]
    assert published["retrieval-metrics"]["content"] == [
        {"metric": "knn_accuracy", "value": 0.75},
        {"metric": "precision_at_10", "value": 0.5},
        {"metric": "pixels/knn_accuracy", "value": 0.5},  # a baseline's clean scores are not repeated
        {"metric": "gain over pixels/knn_accuracy", "value": 0.25},
        {"metric": "distillation/fraction of the teacher's knn_accuracy", "value": 0.9},
        {"metric": "distillation/speedup", "value": 3.5},
        {"metric": "clean/knn_accuracy", "value": 0.7},
        {"metric": "leaks/n_leaked", "value": 2},
        {"metric": "leaks/exact", "value": 1},
        {"metric": "leaks/near", "value": 1},
    ]
    assert set(published) == {"retrieval-summary", "retrieval-metrics"}  # no pictures drawn, no duplicates


def test_clean_scores_are_listed_only_when_some_queries_leaked(published, tmp_path):
    report.publish_report.fn(
        summary(tmp_path, clean={"knn_accuracy": 0.75}, leaks={"n_leaked": 0, "exact": 0, "near": 0, "why": "..."})
    )
    assert [row["metric"] for row in published["retrieval-metrics"]["content"]] == [
        "knn_accuracy",
        "precision_at_10",
        "leaks/n_leaked",
        "leaks/exact",
        "leaks/near",
    ]


def test_pictures_are_inlined_and_duplicate_groups_tabled_largest_first(published, tmp_path):
    from PIL import Image

    grid = tmp_path / "grid.png"
    Image.new("RGB", (8, 8), "red").save(grid)
    found = tmp_path / "duplicates.json"
    found.write_text(
        json.dumps(
            {
                "near_groups": [{"rows": [3, 7, 9], "labels": ["Bag", None, "Bag"], "distances": [0.0, 0.001, 0.0125]}],
                # the first exact pair lies inside the near group: one row for both
                "exact_groups": [
                    {"rows": [3, 7], "labels": ["Bag", None], "distances": [0.0, 0.0]},
                    {"rows": [20, 21], "labels": [2, 1], "distances": [0.0, 0.0]},
                ],
                "n_groups": 2,
                "n_images_in_groups": 5,
                "n_images": 48,
                "threshold_why": "0.002: calibrated",
            }
        )
    )
    artifacts = {"retrieval_grid": str(grid), "map": None, "duplicates": str(found), "duplicates_picture": str(grid)}
    report.publish_report.fn({**summary(tmp_path), "artifacts": artifacts})
    picture = published["retrieval-grid"]
    assert picture["kind"] == "image" and picture["description"].endswith(f"; file: {grid}")
    assert base64.b64decode(picture["content"].removeprefix("data:image/png;base64,")) == grid.read_bytes()
    assert "collection-map" not in published and published["duplicates"]["kind"] == "image"
    assert published["duplicate-groups"]["content"] == [
        {"group": 1, "kind": "near", "images": 3, "rows": "3 7 9", "labels": "Bag", "distances": "0.0010 0.0125"},
        {"group": 2, "kind": "exact", "images": 2, "rows": "20 21", "labels": "1, 2", "distances": "0.0000"},
    ]
    assert published["duplicate-groups"]["description"] == (
        f"2 groups hold 5 of 48 images; threshold 0.002: calibrated; file: {found}"
    )
