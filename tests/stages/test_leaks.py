"""Leak-aware evaluation and the map of the collection, on a collection with planted train/test copies.

The collection: 2 labels x 12 noise images in `train/`; `test/` holds, per label, one byte-identical
copy of a train image (exact leak), one copy with a single pixel changed (near leak) and 2 new images.
With k = 1 a leaked query finds its own copy (same label) first, so its precision@1 is 1: the raw
precision over 8 queries must be (4 + 4 x clean precision) / 8.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import evaluated_chain, make_png
from PIL import Image

from lookalike.stages.evaluation.leaks import leaking_queries

LABELS = ("cats", "dogs")


def plant(folder) -> None:
    for n, label in enumerate(LABELS):
        for i in range(12):
            make_png(folder / "train" / label / f"{i}.png", 100 * n + i)
        shutil.copy(folder / "train" / label / "0.png", folder / "test" / label / "exact.png")
        pixels = np.array(Image.open(folder / "train" / label / "1.png"))
        pixels[0, 0] ^= 0x01  # one pixel's lowest bit: other bytes, the same picture
        Image.fromarray(pixels, "L").save(folder / "test" / label / "near.png")
        for i in range(2):
            make_png(folder / "test" / label / f"new{i}.png", 1000 + 100 * n + i)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    (folder / "test" / "cats").mkdir(parents=True)
    (folder / "test" / "dogs").mkdir(parents=True)
    plant(folder)
    root = folder / "artifacts"
    _, evaluation = evaluated_chain(root, **{"dataset.source": str(folder), "dataset.limit": None, "evaluation.k": 1})
    return root, evaluation


def test_planted_copies_are_counted_as_leaks_and_scored_apart(planted):
    _, evaluation = planted
    stats = evaluation.stats
    assert stats["protocol"] == "held-out:test" and stats["n_queries"] == 8
    leaks = stats["leaks"]
    assert (leaks["n_leaked"], leaks["exact"], leaks["near"]) == (4, 2, 2), leaks
    assert leaks["threshold"] > 0 and "augmented copies" in leaks["why"]
    clean = stats["clean"]
    assert clean["n_queries"] == 4
    assert stats["precision_at_1"] == pytest.approx((4 + 4 * clean["precision_at_1"]) / 8, abs=1e-6)
    assert stats["knn_accuracy"] == pytest.approx((4 + 4 * clean["knn_accuracy"]) / 8, abs=1e-6)
    # the baselines are scored on the same clean queries, and the clean gain is over them
    for name, measured in stats["baselines"].items():
        assert measured["clean"]["n_queries"] == 4
        assert clean["gain"][name]["precision_at_1"] == pytest.approx(
            clean["precision_at_1"] - measured["clean"]["precision_at_1"], abs=1e-6
        )


def test_the_map_is_in_the_evaluation_folder_with_its_hash_and_one_point_per_image(planted):
    import hashlib

    from lookalike.core.manifest import stage_dir

    root, evaluation = planted
    folder = stage_dir(root, "evaluation", evaluation.key)
    picture = evaluation.file("map.png")
    assert hashlib.sha256((folder / "map.png").read_bytes()).hexdigest() == picture.sha256
    with Image.open(folder / "map.png") as image:
        assert image.size == (800, 600)
    points = json.loads((folder / "map.json").read_text())
    assert sorted(points["rows"]) == list(range(24)) and len(points["x"]) == len(points["y"]) == 24
    assert {*points["labels"]} == set(LABELS)
    assert evaluation.stats["map"]["n_points"] == 24


def test_the_wandb_map_table_has_one_row_per_mapped_image(planted, tmp_path):
    from wandb_offline import read_offline_run

    from lookalike.core.settings import TrackingSettings
    from lookalike.reporting.tracking import TrackingRun
    from lookalike.stages.evaluation.collection_map import map_table

    root, evaluation = planted
    columns, rows = map_table(root, evaluation)
    run = TrackingRun(TrackingSettings(mode="offline"), tmp_path, name="t", job_type="x", group=None, config={})
    run.log_table("map_points", columns, rows)
    run_dir = run.run_dir
    run.finish()
    offline = read_offline_run(run_dir)
    (artifact,) = [a for a in offline["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-map_points")]
    from pathlib import Path

    table = json.loads(Path(artifact["files"]["map_points.table.json"]["local_path"]).read_text())
    assert table["columns"][:5] == ["row", "label", "image", "x", "y"] and table["columns"][5] == "pc_1"
    assert len(table["data"]) == 24
    assert all(row[2]["_type"] == "image-file" for row in table["data"])


def test_leave_one_out_leaks_are_copies_other_than_the_query_itself():
    indexed = {0: "a", 1: "a", 2: "b", 3: "c"}
    # each query's results, its own row among them (leave-one-out); distances squared L2
    ids = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
    distances = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.01], [0.0, 0.5]])
    exact, near = leaking_queries(["a", "a", "b", "c"], np.arange(4), distances, ids, indexed, 0.05, "l2", True)
    assert exact.tolist() == [True, True, False, False]
    assert near.tolist() == [False, False, True, False]  # row 2's nearest other is 0.01 away; row 3's 0.5
    held_out, _ = leaking_queries(["b"], np.array([7]), distances[2:3], ids[2:3], indexed, None, "l2", False)
    assert held_out.tolist() == [True]  # held-out: any indexed image with its hash
