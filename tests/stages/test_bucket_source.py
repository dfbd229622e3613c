"""`--dataset s3://bucket/prefix`: a collection in a bucket, against moto's S3 server."""

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.content_hashes import hash_listing, memo_path
from lookalike.stages.dataset.listing import list_files
from lookalike.stages.dataset.sources import DatasetError, check_source, list_splits
from lookalike.stages.dataset.stage import dataset_key, open_snapshot, run_dataset_stage


@pytest.fixture
def bucket(s3_endpoint, tmp_path, monkeypatch):
    """A bucket holding `photos/{train,test}/{cats,dogs}/<n>.png`, and the same files in a folder."""
    import uuid

    from lookalike.artifacts.s3 import collection_client, s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # boto3's own variable: how users point it elsewhere
    collection_client.cache_clear()
    name = f"photos-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    folder = tmp_path / "photos"
    for i in range(8):
        rel = f"{'train' if i < 6 else 'test'}/{'cats' if i % 2 else 'dogs'}/{i}.png"
        make_png(folder / rel, i)
        client.upload_file(str(folder / rel), name, f"photos/{rel}")
    yield name, client, folder
    collection_client.cache_clear()


def test_a_bucket_is_keyed_by_content_like_the_same_folder_and_read_as_an_image_folder(bucket, tmp_path):
    name, _, folder = bucket
    url = f"s3://{name}/photos/"
    section = DatasetSettings(source=url)
    assert dataset_key(section, tmp_path / "a")[0] == dataset_key(DatasetSettings(source=str(folder)))[0]
    assert list_splits(section, tmp_path / "cache") == ["train", "test"]
    result = run_dataset_stage(section, tmp_path / "a")
    stats = result.manifest.stats
    assert (stats["n_images"], stats["label_names"], stats["source"]) == (6, ["cats", "dogs"], f"bucket:{url[:-1]}")
    snapshot = open_snapshot(tmp_path / "a", result.manifest)
    assert snapshot[0]["image"]["path"] == f"s3://{name}/photos/train/cats/1.png"


def test_a_cached_rerun_reads_no_object_and_an_overwritten_one_is_read_again(bucket, tmp_path):
    name, client, folder = bucket
    memo = memo_path(tmp_path / "root")
    url = f"s3://{name}/photos"
    assert hash_listing(list_files(url), memo).hashed == 8
    assert hash_listing(list_files(url), memo).hashed == 0  # ETag and size unchanged: from the memo
    make_png(folder / "other.png", 99)
    client.upload_file(str(folder / "other.png"), name, "photos/train/cats/1.png")
    again = hash_listing(list_files(url), memo)
    assert (again.hashed, again.reused) == (1, 7)


def test_a_missing_bucket_or_an_empty_prefix_is_one_line(bucket):
    name, _, _ = bucket
    with pytest.raises(DatasetError, match=r"bucket 'no-such-bucket' does not exist at http://127.0.0.1:\d+"):
        check_source(DatasetSettings(source="s3://no-such-bucket/photos"))
    with pytest.raises(DatasetError, match="contains no image files"):
        check_source(DatasetSettings(source=f"s3://{name}/nothing-here"))
