import os
from pathlib import Path

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.folders import read_image_folder
from lookalike.stages.dataset.listing import list_files, one_listing_per_run
from lookalike.stages.dataset.sources import list_splits, open_source, resolve_source
from lookalike.stages.dataset.stage import dataset_key, run_dataset_stage

# Layouts people point lookalike at, each read by datasets' imagefolder and by the listing.
LAYOUTS = {
    "classes": ["cats/0.png", "cats/1.jpg", "dogs/0.png", "dogs/sub-a.png"],
    "flat": ["a.png", "b.png", "c.jpeg"],
    "one class": ["cats/0.png", "cats/1.png"],
    "split folders": [
        "train/cats/0.png",
        "train/dogs/1.png",
        "test/cats/2.png",
        "test/dogs/3.png",
        "validation/cats/4.png",
    ],
    "split in names": ["train_0.png", "train_1.png", "test_0.png", "valid-2.png"],
    "mixed depths": ["cats/0.png", "dogs/puppies/1.png", "dogs/2.png"],
    "noise": [
        "cats/0.png",
        "cats/notes.txt",
        "dogs/1.png",
        "__pycache__/x.png",
        "dogs/2.PNG",
        "dogs/3.png.bak",
    ],
    "deep classes": ["x/y/cats/0.png", "x/y/dogs/1.png", "x/y/dogs/2.png"],
}


def build(folder: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        if name.endswith((".png", ".jpg", ".jpeg", ".PNG")):
            make_png(folder / name, i)
        else:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("not an image")
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_folder_read_from_its_listing_has_the_splits_rows_and_labels_datasets_gives_it(tmp_path, layout):
    import datasets

    folder = build(tmp_path / "imgs", LAYOUTS[layout])
    theirs = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    ours = read_image_folder(list_files(folder))
    assert ours is not None
    assert list(ours.splits) == list(theirs)
    for split, files in ours.splits.items():
        expected = theirs[split].cast_column("image", datasets.Image(decode=False))
        assert [f.path for f in files] == [image["path"] for image in expected["image"]]
        names = expected.features["label"].names if "label" in expected.features else None
        assert ours.label_names == names
        if names:
            assert [ours.label_of(f) for f in files] == [names[label] for label in expected["label"]]


def test_tables_and_metadata_files_are_left_to_datasets(tmp_path):
    build(tmp_path / "meta", ["0.png", "1.png"])
    (tmp_path / "meta" / "metadata.csv").write_text("file_name,year\n0.png,2020\n1.png,2021\n")
    assert read_image_folder(list_files(tmp_path / "meta")) is None
    from lookalike.stages.dataset.sources import SAMPLE_DIR

    assert read_image_folder(list_files(SAMPLE_DIR)) is None  # the HF parquet layout


def test_one_run_walks_a_folder_once_for_its_key_snapshot_and_splits(tmp_path, root, monkeypatch):
    folder = build(tmp_path / "imgs", LAYOUTS["split folders"])
    walked = []
    scandir = os.scandir

    def counting_scandir(path):
        walked.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    section = DatasetSettings(source=str(folder))
    with one_listing_per_run():
        dataset_key(section, root)
        run_dataset_stage(section, root)
        run_dataset_stage(DatasetSettings(source=str(folder), split="test"), root)
        assert list_splits(section, root / "cache") == ["train", "validation", "test"]
    assert walked.count(str(folder)) == 1
    monkeypatch.undo()
    # outside a run, each question lists again: files added between runs are seen
    make_png(folder / "train" / "cats" / "new.png", 50)
    ds, _ = open_source(resolve_source(section), section, root / "cache")
    assert len(ds) == 3
