"""Where the evaluation's queries come from: listing a source's splits and choosing the held-out one."""

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings, EvaluationSettings
from lookalike.stages.dataset.sources import SAMPLE_DIR, DatasetError, list_splits
from lookalike.stages.evaluation.stage import query_dataset_section


def chosen(root, dataset: DatasetSettings, **evaluation):
    return query_dataset_section(dataset, EvaluationSettings(**evaluation), root)


def test_auto_picks_the_samples_test_split_capped_at_max_queries(root):
    queries = chosen(root, DatasetSettings(limit=48, seed=3), max_queries=100)
    assert queries == DatasetSettings(split="test", limit=100, seed=3)
    assert chosen(root, DatasetSettings(), max_queries=None).limit is None


def test_auto_falls_back_to_leave_one_out_without_another_split(root):
    assert chosen(root, DatasetSettings(split="test")) is None  # the sample has no validation split
    assert chosen(root, DatasetSettings(), query_split="none") is None


def test_a_named_split_must_exist_and_differ_from_the_indexed_one(root):
    with pytest.raises(
        DatasetError,
        match=r"query_split 'validation': .* no such split; its splits are: train, test "
        r"\(or use 'auto' or 'none'\)$",
    ):
        chosen(root, DatasetSettings(), query_split="validation")
    with pytest.raises(DatasetError, match=r"query_split 'train' is the split being indexed"):
        chosen(root, DatasetSettings(), query_split="train")
    assert chosen(root, DatasetSettings(split="test"), query_split="train").split == "train"


def test_image_folder_splits_come_from_its_subfolders(tmp_path, root):
    for split in ("train", "test"):
        for label in ("cats", "dogs"):
            make_png(tmp_path / "split" / split / label / "0.png", len(split + label))
        make_png(tmp_path / "flat" / f"{len(split)}.png", len(split))  # not named after a split
    assert list_splits(DatasetSettings(source=str(tmp_path / "split")), root) == ["train", "test"]
    assert chosen(root, DatasetSettings(source=str(tmp_path / "split"))).split == "test"
    assert list_splits(DatasetSettings(source=str(tmp_path / "flat")), root) == ["train"]
    assert chosen(root, DatasetSettings(source=str(tmp_path / "flat"))) is None


def test_save_to_disk_and_parquet_sources_list_their_splits(tmp_path, root):
    from datasets import DatasetDict, load_dataset

    ds = load_dataset(str(SAMPLE_DIR), split="test", cache_dir=str(tmp_path / "hf")).select(range(4))
    DatasetDict(train=ds, validation=ds).save_to_disk(str(tmp_path / "dict"))
    ds.save_to_disk(str(tmp_path / "single"))
    ds.to_parquet(str(tmp_path / "x.parquet"))
    assert list_splits(DatasetSettings(source=str(tmp_path / "dict")), root) == ["train", "validation"]
    assert chosen(root, DatasetSettings(source=str(tmp_path / "dict"))).split == "validation"
    for single in ("single", "x.parquet"):
        assert list_splits(DatasetSettings(source=str(tmp_path / single)), root) == []
        assert chosen(root, DatasetSettings(source=str(tmp_path / single))) is None
        with pytest.raises(DatasetError, match="single table without named splits"):
            chosen(root, DatasetSettings(source=str(tmp_path / single)), query_split="test")


def test_the_sample_size_is_keyed_only_when_it_leaves_indexed_images_out():
    """Collections no larger than evaluation.sample_size keep the keys they had before it existed."""
    from lookalike.core.manifest import Manifest
    from lookalike.stages.evaluation.stage import evaluation_key

    def manifest(stage: str, n_images: int | None = None) -> Manifest:
        stats = {} if n_images is None else {"n_images": n_images}
        return Manifest(
            stage=stage, key=stage[:4], code_version=1, created="", settings={}, inputs={}, files=[], stats=stats
        )

    def key(n_images: int, **evaluation) -> str:
        return evaluation_key(EvaluationSettings(**evaluation), manifest("dataset", n_images), manifest("index"))

    before = key(48)  # the default, 50,000, leaves none of 48 out
    assert key(48, sample_size=48) == key(48, sample_size=None) == before
    assert key(48, sample_size=20) != before and key(48, sample_size=20) != key(48, sample_size=30)
    assert key(100_000) != key(100_000, sample_size=None)  # the default samples 100,000 images
