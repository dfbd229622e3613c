import os
from pathlib import Path

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.sources import DatasetError
from lookalike.stages.dataset.stage import dataset_key, open_snapshot, run_dataset_stage


def folder_dataset(tmp_path):
    for i in range(4):
        make_png(tmp_path / "imgs" / "cats" / f"{i}.png", i)
        make_png(tmp_path / "imgs" / "dogs" / f"{i}.png", 10 + i, mode="RGBA")
    return tmp_path / "imgs"


def test_bundled_sample_loads_with_class_names_and_stable_row_ids(root):
    result = run_dataset_stage(DatasetSettings(limit=40), root)
    stats = result.manifest.stats
    assert stats["n_images"] == 40 and stats["n_skipped"] == 0
    assert stats["label_names"][0] == "T-shirt/top" and len(stats["label_names"]) == 10
    snapshot = open_snapshot(root, result.manifest)
    row_ids = snapshot["row_id"]
    assert row_ids == sorted(row_ids) and max(row_ids) >= 40  # seeded subset of the 3000 rows


def test_imagefolder_subfolders_become_labels(tmp_path, root):
    result = run_dataset_stage(DatasetSettings(source=str(folder_dataset(tmp_path))), root)
    assert result.manifest.stats["label_names"] == ["cats", "dogs"]
    assert result.manifest.stats["n_images"] == 8


def test_flat_folder_without_labels_is_indexed_unlabelled(tmp_path, root):
    for i in range(3):
        make_png(tmp_path / "flat" / f"{i}.png", i)
    result = run_dataset_stage(DatasetSettings(source=str(tmp_path / "flat")), root)
    assert result.manifest.stats["label_names"] is None
    assert result.manifest.stats["n_images"] == 3


def test_file_names_datasets_cannot_list_are_indexed_with_the_class_of_their_folder(tmp_path, root):
    folder = folder_dataset(tmp_path)
    make_png(folder / "dogs" / "new\nline.png", 40)
    make_png(Path(os.fsdecode(os.fsencode(folder / "cats") + b"/latin-\xe9.png")), 41)
    result = run_dataset_stage(DatasetSettings(source=str(folder)), root)
    assert result.manifest.stats["n_images"] == 10
    snapshot = open_snapshot(root, result.manifest)
    names = result.manifest.stats["label_names"]
    labels = {Path(image["path"]).name: names[label] for image, label in zip(snapshot["image"], snapshot["label"])}
    assert (labels["new\nline.png"], labels["latin-\\xe9.png"]) == ("dogs", "cats")


def test_parquet_file_and_save_to_disk_folder_load_the_same_images(tmp_path, root):
    from datasets import load_dataset

    from lookalike.stages.dataset.sources import SAMPLE_DIR

    ds = load_dataset(str(SAMPLE_DIR), split="test", cache_dir=str(tmp_path / "hf"))
    ds.select(range(12)).to_parquet(str(tmp_path / "x.parquet"))
    ds.select(range(12)).save_to_disk(str(tmp_path / "saved"))
    a = run_dataset_stage(DatasetSettings(source=str(tmp_path / "x.parquet")), root).manifest
    b = run_dataset_stage(DatasetSettings(source=str(tmp_path / "saved")), root).manifest
    assert a.stats["n_images"] == b.stats["n_images"] == 12
    shas = [open_snapshot(root, m)["sha256"] for m in (a, b)]
    assert shas[0] == shas[1]


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, root):
    source = folder_dataset(tmp_path)
    (source / "cats" / "empty.png").write_bytes(b"")
    (source / "cats" / "text.jpg").write_text("not an image")
    good = (source / "dogs" / "0.png").read_bytes()
    (source / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    result = run_dataset_stage(DatasetSettings(source=str(source), max_unreadable_fraction=0.5), root)
    stats = result.manifest.stats
    assert stats["n_images"] == 8 and stats["n_skipped"] == 3
    reasons = {os.path.basename(s["path"]): s["reason"] for s in stats["skipped"]}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.png"}
    assert "empty" in reasons["empty.png"]


def test_too_many_unreadable_images_fail_with_the_fraction_and_examples(tmp_path, root):
    source = folder_dataset(tmp_path)
    for i in range(3):
        (source / "cats" / f"bad{i}.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"more than 10% of 11 images are unreadable.*bad0.png"):
        run_dataset_stage(DatasetSettings(source=str(source)), root)


def test_wrong_image_column_lists_the_columns_that_exist(root):
    with pytest.raises(DatasetError, match=r"no image column 'img'; columns are: image, label"):
        run_dataset_stage(DatasetSettings(image_column="img"), root)


def test_missing_split_lists_the_splits(root):
    with pytest.raises(DatasetError, match=r"no split 'validation'; splits are: train, test"):
        run_dataset_stage(DatasetSettings(split="validation"), root)


def test_missing_local_path_is_a_clear_error(root):
    with pytest.raises(DatasetError, match="no such file or folder"):
        run_dataset_stage(DatasetSettings(source="./does/not/exist"), root)


def test_hub_name_while_offline_says_how_to_use_local_data(monkeypatch, root):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="cannot reach the Hugging Face hub.*local image folder"):
        dataset_key(DatasetSettings(source="food101"))


def test_key_follows_content_not_paths_or_mtimes(tmp_path):
    source = folder_dataset(tmp_path)
    key = dataset_key(DatasetSettings(source=str(source)))[0]
    os.utime(source / "cats" / "0.png", (1, 1))
    assert dataset_key(DatasetSettings(source=str(source)))[0] == key
    moved = source.rename(tmp_path / "moved")
    assert dataset_key(DatasetSettings(source=str(moved)))[0] == key
    make_png(moved / "cats" / "0.png", 99)
    assert dataset_key(DatasetSettings(source=str(moved)))[0] != key


def test_worker_processes_take_the_same_snapshot_as_one_process(tmp_path):
    folder = folder_dataset(tmp_path)
    (folder / "cats" / "broken.png").write_bytes((folder / "cats" / "0.png").read_bytes()[:40])  # truncated
    (folder / "dogs" / "empty.png").write_bytes(b"")
    snapshots = {}
    for workers in (0, 2):
        section = DatasetSettings(source=str(folder), num_workers=workers, max_unreadable_fraction=0.5)
        result = run_dataset_stage(section, tmp_path / f"root-{workers}")
        snapshot = open_snapshot(tmp_path / f"root-{workers}", result.manifest)
        snapshots[workers] = (result.manifest.files, result.manifest.stats["skipped"], snapshot["sha256"])
    assert snapshots[0] == snapshots[2]
    assert [s["reason"] for s in snapshots[2][1]] == ["not a recognised image format", "empty file (0 bytes)"]


def test_a_script_without_a_main_guard_gets_one_line_instead_of_hanging(tmp_path):
    """The check's spawn workers import the script that started the run; one calling lookalike at its
    top level ran the stage again in each worker, which waited forever on its parent's stage lock."""
    import subprocess
    import sys

    for i in range(8):
        make_png(tmp_path / "images" / f"{i}.png", i)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from lookalike.core.settings import DatasetSettings\n"
        "from lookalike.stages.dataset.stage import run_dataset_stage\n"
        f"section = DatasetSettings(source={str(tmp_path / 'images')!r}, num_workers=2)\n"
        f"run_dataset_stage(section, {str(tmp_path / 'artifacts')!r})\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=os.environ | {"PYTHONPATH": ""}
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "DatasetError: the dataset stage's worker processes stopped" in last
    assert 'if __name__ == "__main__":' in last and "dataset.num_workers=0" in last


def test_the_cycle_collector_is_back_on_after_the_stage_even_when_it_fails(tmp_path, root):
    import gc

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(DatasetError):
        run_dataset_stage(DatasetSettings(source=str(tmp_path / "empty")), root)
    assert gc.isenabled()
    run_dataset_stage(DatasetSettings(source=str(folder_dataset(tmp_path))), root)
    assert gc.isenabled()


def test_max_side_stores_a_bounded_copy_of_the_larger_images_keyed_and_in_parts_of_their_own(tmp_path, root):
    import hashlib
    import io

    import numpy as np
    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "big").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(folder / "big" / "a.jpg", quality=90)
    make_png(folder / "big" / "b.png", 3)  # small: stored as it is
    originals = run_dataset_stage(DatasetSettings(source=str(folder)), root).manifest
    bounded = run_dataset_stage(DatasetSettings(source=str(folder), max_side=128), root).manifest
    assert "max_side" not in DatasetSettings(source=str(folder)).key_fields()
    assert bounded.key != originals.key
    assert bounded.stats["storage"]["parts_reused"] == 0  # the originals' parts hold other bytes
    snapshot = open_snapshot(root, bounded)
    by_path = {Path(i["path"]).name: (i, sha) for i, sha in zip(snapshot["image"], snapshot["sha256"])}
    image, sha = by_path["a.jpg"]
    assert Image.open(io.BytesIO(image["bytes"])).size == (128, 85)
    assert sha == hashlib.sha256((folder / "big" / "a.jpg").read_bytes()).hexdigest()  # the content's, as the key's
    assert Path(image["path"]) == folder / "big" / "a.jpg"  # the original stays reachable
    small, _ = by_path["b.png"]
    assert small["bytes"] == (folder / "big" / "b.png").read_bytes()
    assert bounded.stats["storage"]["bytes_written"] < originals.stats["storage"]["bytes_written"] / 5
