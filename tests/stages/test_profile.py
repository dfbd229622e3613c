"""The dataset stage records what the images are like: sizes and whether they are grayscale."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lookalike.core.settings import load_settings
from lookalike.stages.dataset.profile import describe_profile
from lookalike.stages.dataset.stage import run_dataset_stage


def snapshot_profile(tmp_path, source: str, **changes) -> dict:
    settings = load_settings({"dataset.source": source, "artifacts_root": str(tmp_path / "a"), **changes})
    return run_dataset_stage(settings.dataset, tmp_path / "a").manifest.stats["profile"]


def test_the_bundled_sample_is_28_px_grayscale(tmp_path):
    profile = snapshot_profile(tmp_path, "sample", **{"dataset.limit": 100})
    assert profile["colour"] == "grayscale" and profile["grayscale_fraction"] == 1.0
    assert profile["width"] == profile["height"] == {"min": 28, "median": 28, "max": 28}
    assert describe_profile(profile) == "28x28 px (median), grayscale"


def test_colour_photos_of_mixed_sizes_and_grey_scans_saved_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (w, h) in enumerate([(64, 48), (120, 80), (200, 150), (90, 90)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").save(folder / f"c{i}.jpg", quality=90)
    grey = rng.integers(0, 255, (50, 50), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=2), "RGB").save(folder / "scan.png")  # grey pixels in an RGB file
    profile = snapshot_profile(tmp_path, str(folder), **{"dataset.label_column": None})
    assert profile["grayscale_fraction"] == 0.2 and profile["colour"] == "mixed"
    assert profile["width"] == {"min": 50, "median": 90, "max": 200}
    assert profile["modes"] == {"RGB": 5}
