"""The dataset stage records what the images are like: sizes, whether they are grayscale, and whether
every image puts its object in the same place."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lookalike.core.settings import load_settings
from lookalike.stages.dataset.profile import ALIGNED_SHARE, describe_profile, layout_share
from lookalike.stages.dataset.stage import run_dataset_stage


def snapshot_profile(tmp_path, source: str, **changes) -> dict:
    settings = load_settings({"dataset.source": source, "artifacts_root": str(tmp_path / "a"), **changes})
    return run_dataset_stage(settings.dataset, tmp_path / "a").manifest.stats["profile"]


def test_the_bundled_sample_is_28_px_grayscale(tmp_path):
    profile = snapshot_profile(tmp_path, "sample", **{"dataset.limit": 100})
    assert profile["colour"] == "grayscale" and profile["grayscale_fraction"] == 1.0
    assert profile["width"] == profile["height"] == {"min": 28, "median": 28, "max": 28}
    assert profile["layout"] == "aligned" and profile["layout_share"] > 2 * ALIGNED_SHARE  # centred clothing
    assert describe_profile(profile) == "28x28 px (median), grayscale, aligned"


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


def test_layout_share_is_the_variance_position_explains():
    rng = np.random.default_rng(0)
    silhouette = np.zeros((16, 16), np.float32)
    silhouette[4:12, 5:11] = 1.0
    aligned = silhouette + rng.normal(0, 0.1, (200, 16, 16)).astype(np.float32)  # one object, one place
    shifted = np.stack([np.roll(silhouette, tuple(rng.integers(0, 16, 2)), (0, 1)) for _ in range(200)])
    assert layout_share(aligned) > 0.9
    assert layout_share(shifted) < ALIGNED_SHARE  # the same object anywhere: the mean image is nearly flat
    assert layout_share(np.zeros((5, 16, 16), np.float32)) == 0.0  # blank images: nothing to explain


def test_photos_framed_differently_are_varied(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(40):  # a bright blob at a random place on a textured background
        pixels = rng.integers(0, 120, (48, 64, 3), dtype=np.uint8)
        y, x = rng.integers(0, 32), rng.integers(0, 48)
        pixels[y : y + 16, x : x + 16] = 250
        Image.fromarray(pixels, "RGB").save(folder / f"s{i}.jpg", quality=90)
    profile = snapshot_profile(tmp_path, str(folder), **{"dataset.label_column": None})
    assert profile["layout"] == "varied" and profile["layout_share"] < ALIGNED_SHARE
