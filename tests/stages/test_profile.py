"""The dataset stage records what the images are like: sizes, whether they are grayscale, and whether
every image puts its object in the same place."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageFile

from lookalike.core.settings import load_settings
from lookalike.stages.dataset import profile as profile_module
from lookalike.stages.dataset.profile import ALIGNED_SHARE, describe_profile, layout_share, profile_images
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


def _photos(folder, count: int, start: int = 0) -> None:
    rng = np.random.default_rng(start)
    folder.mkdir(exist_ok=True)
    for i in range(start, start + count):
        w, h = int(rng.integers(300, 700)), int(rng.integers(300, 700))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").save(folder / f"p{i:03d}.jpg")


def test_the_dataset_stage_decodes_each_image_once_for_its_check_and_its_profile(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    _photos(folder, 6)
    decoded = []
    load = ImageFile.ImageFile.load

    def counted(self):
        if self.tile:  # pixels still to decode (a load of a loaded image decodes nothing)
            decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    profile = snapshot_profile(tmp_path, str(folder), **{"dataset.label_column": None, "dataset.num_workers": 0})
    assert profile["colour"] == "colour" and profile["width"]["min"] >= 300
    assert len(decoded) == 6  # the check's decode gave the colour and layout figures too (was 12)
    assert all(max(size) < 100 for size in decoded)  # drafted: JPEGs decoded at 1/8 scale


def test_a_grown_collection_has_the_profile_of_the_same_images_taken_afresh(tmp_path):
    folder = tmp_path / "photos"
    _photos(folder, 5)
    root = tmp_path / "a"
    settings = {"dataset.source": str(folder), "dataset.label_column": None, "dataset.num_workers": 0}
    run_dataset_stage(load_settings({**settings, "artifacts_root": str(root)}).dataset, root)
    _photos(folder, 2, start=5)  # its first part is reused: those images are not decoded by this run's check
    grown = run_dataset_stage(load_settings({**settings, "artifacts_root": str(root)}).dataset, root).manifest
    assert grown.stats["storage"]["parts_reused"] >= 1
    afresh = snapshot_profile(tmp_path / "fresh", str(folder), **{"dataset.label_column": None})
    assert grown.stats["profile"] == afresh


def test_the_profile_sample_decoded_in_a_pool_is_the_one_decoded_here(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    _photos(folder, 40)
    images = _Images([path.read_bytes() for path in sorted(folder.iterdir())])
    shapes = []
    for data in images.datas:
        with Image.open(io.BytesIO(data)) as img:
            shapes.append((img.width, img.height, img.mode, 1))
    here = profile_images(images, shapes=shapes)
    assert here == profile_images(images)  # every header read and the sample decoded in the same pass
    monkeypatch.setattr(profile_module, "_POOL_MIN_BYTES", 0)  # every image to the pool
    with _CountingPool(2) as pool:
        assert profile_images(images, shapes=shapes, pool=pool) == here
    assert pool.tasks == 3  # 40 images, 16 a task


class _Images:
    """Encoded images by position, as the profile reads a snapshot's."""

    def __init__(self, datas: list[bytes]) -> None:
        self.datas = datas

    def __len__(self) -> int:
        return len(self.datas)

    def image_bytes(self, positions: list[int]) -> list[bytes]:
        return [self.datas[p] for p in positions]


class _CountingPool(ThreadPoolExecutor):
    tasks = 0

    def submit(self, fn, /, *args, **kwargs):
        self.tasks += 1
        return super().submit(fn, *args, **kwargs)
