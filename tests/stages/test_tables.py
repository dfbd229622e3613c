"""A manifest table (CSV, JSON lines, Parquet) as a dataset source: rows name images by path or s3:// URL."""

import gzip
import json
import os
import warnings

import pytest
from helpers import make_png

from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.content_hashes import memo_path
from lookalike.stages.dataset.listing import one_listing_per_run
from lookalike.stages.dataset.sources import DatasetError, check_source, resolve_source
from lookalike.stages.dataset.stage import dataset_key, open_snapshot, run_dataset_stage
from lookalike.stages.dataset.tables import hash_table

ORDER = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]  # not the files' name order: the snapshot keeps the table's


def rows_of(refs: list[str]) -> list[dict]:
    return [{"file": ref, "kind": "cat" if n % 2 else "dog", "year": 2000 + n} for n, ref in zip(ORDER, refs)]


def write_table(path, rows: list[dict]) -> None:
    """`rows` as the table format `path`'s name says."""
    if path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.name.endswith((".jsonl", ".jsonl.gz")):
        with (gzip.open if path.suffix == ".gz" else open)(path, "wt") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        lines = [",".join(rows[0])] + [",".join(str(v) for v in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n")


def settings(table, **extra) -> DatasetSettings:
    return DatasetSettings(
        source=str(table), image_column="file", label_column="kind", metadata_columns=("year",), **extra
    )


@pytest.fixture
def collection(tmp_path):
    """Ten images under `photos/imgs/`; the table is written beside them by each test."""
    folder = tmp_path / "photos"
    for n in range(10):
        make_png(folder / "imgs" / f"{n}.png", n)
    return folder


@pytest.mark.parametrize("name", ["catalogue.csv", "catalogue.jsonl.gz", "catalogue.parquet"])
def test_a_table_of_relative_paths_is_snapshotted_in_its_order_with_labels_and_metadata(collection, tmp_path, name):
    table = collection / name
    write_table(table, rows_of([f"imgs/{n}.png" for n in ORDER]))
    section = settings(table)
    assert resolve_source(section).kind == "table"
    result = run_dataset_stage(section, tmp_path / "root")
    stats = result.manifest.stats
    assert (stats["n_images"], stats["n_skipped"], stats["label_names"]) == (10, 0, ["cat", "dog"])
    snapshot = open_snapshot(tmp_path / "root", result.manifest)
    assert list(snapshot["row_id"]) == list(range(10))
    assert [r["path"] for r in list(snapshot["image"])] == [str(collection / "imgs" / f"{n}.png") for n in ORDER]
    assert list(snapshot["label"]) == [0 if n % 2 else 1 for n in ORDER]
    assert list(snapshot["year"]) == [2000 + n for n in ORDER]


def test_the_key_follows_the_rows_and_images_not_the_table_file(collection, tmp_path):
    table = collection / "catalogue.csv"
    write_table(table, rows_of([f"imgs/{n}.png" for n in ORDER]))
    root = tmp_path / "root"
    key = dataset_key(settings(table), root)[0]
    os.utime(table, ns=(1, 1))  # touched: same content
    copy = collection / "copy-of-catalogue.csv"  # another name beside it: the same rows
    copy.write_bytes(table.read_bytes())
    assert dataset_key(settings(table), root)[0] == key == dataset_key(settings(copy), root)[0]
    assert hash_table(str(table), settings(table), memo_path(root)).hashed == 0  # a re-run reads no image
    make_png(collection / "imgs" / "3.png", 99)  # one referenced image changes
    assert dataset_key(settings(table), root)[0] != key
    write_table(
        table, rows_of([f"imgs/{n}.png" for n in ORDER])[:-1] + [{"file": "imgs/4.png", "kind": "x", "year": 1}]
    )
    assert len({key, dataset_key(settings(table), root)[0]}) == 2  # a row's label or metadata is content too


def test_a_parquet_file_of_images_stays_the_parquet_source(collection, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": (collection / "imgs" / f"{n}.png").read_bytes(), "path": None} for n in range(3)]
    pq.write_table(pa.Table.from_pylist([{"image": image} for image in images]), tmp_path / "images.parquet")
    assert resolve_source(DatasetSettings(source=str(tmp_path / "images.parquet"))).kind == "parquet"


def test_a_row_naming_a_missing_file_is_skipped_and_counted(collection, tmp_path):
    table = collection / "catalogue.csv"
    write_table(table, rows_of([f"imgs/{n}.png" for n in ORDER[:9]] + ["imgs/gone.png"]))
    with pytest.warns(UserWarning, match=r"1 file\(s\) named by .*catalogue.csv left out .*gone.png: no such file"):
        result = run_dataset_stage(settings(table, max_unreadable_fraction=0.1), tmp_path / "root")
    stats = result.manifest.stats
    assert (stats["n_images"], stats["n_skipped"]) == (9, 1)
    assert stats["skipped"] == [{"row_id": 9, "path": str(collection / "imgs" / "gone.png"), "reason": "no such file"}]
    with warnings.catch_warnings(), pytest.raises(DatasetError, match=r"more than 0% of 10 images are unreadable"):
        warnings.simplefilter("ignore")
        run_dataset_stage(settings(table, max_unreadable_fraction=0), tmp_path / "other")


def test_a_file_that_vanishes_after_the_key_is_skipped_and_counted(collection, tmp_path):
    table = collection / "catalogue.csv"
    write_table(table, rows_of([f"imgs/{n}.png" for n in ORDER]))
    with one_listing_per_run():
        dataset_key(settings(table), tmp_path / "root")
        (collection / "imgs" / "5.png").unlink()
        result = run_dataset_stage(settings(table, num_workers=0), tmp_path / "root")
    stats = result.manifest.stats
    assert (stats["n_images"], stats["n_skipped"]) == (9, 1)
    assert "vanished" in stats["skipped"][0]["reason"]


def test_a_table_without_the_image_column_or_unreadable_is_one_line(collection, monkeypatch):
    table = collection / "catalogue.csv"
    write_table(table, rows_of([f"imgs/{n}.png" for n in ORDER]))
    with pytest.raises(DatasetError, match=r"has no image column 'image'; its columns are: file, kind, year \(use"):
        check_source(DatasetSettings(source=str(table)))
    with pytest.raises(DatasetError, match=r"dataset.metadata_columns: table:.* has no column 'camera'"):
        dataset_key(settings(table).model_copy(update={"metadata_columns": ("camera",)}))
    (collection / "broken.csv").write_text("file,kind\nimgs/0.png,cat,extra\n")
    with pytest.raises(DatasetError, match=r"^cannot read the table .*broken.csv: CSV parse error: Expected 2 columns"):
        check_source(DatasetSettings(source=str(collection / "broken.csv")))
    monkeypatch.chdir(collection)
    with pytest.raises(DatasetError, match=r"^no such file or folder: gone.csv$"):
        check_source(DatasetSettings(source="gone.csv"))  # a table's name, not taken for a hub dataset


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    import uuid

    from lookalike.artifacts.s3 import collection_client, s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    collection_client.cache_clear()
    name = f"catalogue-{uuid.uuid4().hex[:8]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    yield name, client
    collection_client.cache_clear()


def test_a_table_of_s3_urls_is_read_from_the_bucket_and_keyed_by_etag(collection, bucket, tmp_path):
    name, client = bucket
    for n in range(10):
        client.upload_file(str(collection / "imgs" / f"{n}.png"), name, f"imgs/{n}.png")
    table = tmp_path / "catalogue.jsonl"
    write_table(table, rows_of([f"s3://{name}/imgs/{n}.png" for n in ORDER[:9]] + [f"s3://{name}/imgs/gone.png"]))
    root = tmp_path / "root"
    with pytest.warns(UserWarning, match="gone.png: no such object"):
        result = run_dataset_stage(settings(table), root)
    stats = result.manifest.stats
    assert (stats["n_images"], stats["n_skipped"], stats["skipped"][0]["reason"]) == (9, 1, "no such object")
    assert open_snapshot(root, result.manifest)[0]["image"]["path"] == f"s3://{name}/imgs/{ORDER[0]}.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = hash_table(str(table), settings(table), memo_path(root))
    assert (again.hashed, again.reused) == (0, 9)  # size and ETag unchanged: no object read

    write_table(table, rows_of([f"s3://no-such-bucket/imgs/{n}.png" for n in ORDER]))
    for call in (check_source, lambda section: dataset_key(section, root)):  # before a run, and in it
        with pytest.raises(
            DatasetError, match=r"^dataset: bucket 'no-such-bucket' does not exist at http://127.0.0.1:\d+"
        ):
            call(settings(table))


def test_a_parquet_table_written_by_datasets_keeps_its_class_names(collection, tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    names = ["zebra", "ant"]  # not sorted: the declared order is the one kept
    rows = {"file": [f"imgs/{n}.png" for n in range(4)], "kind": [0, 1, 1, 0]}
    features = Features({"file": Value("string"), "kind": ClassLabel(names=names)})
    Dataset.from_dict(rows, features=features).to_parquet(str(collection / "catalogue.parquet"))
    section = DatasetSettings(source=str(collection / "catalogue.parquet"), image_column="file", label_column="kind")
    result = run_dataset_stage(section, tmp_path / "root")
    assert result.manifest.stats["label_names"] == names
    assert list(open_snapshot(tmp_path / "root", result.manifest)["label"]) == [0, 1, 1, 0]


def test_a_table_in_the_bucket_is_read_from_it_with_references_under_its_prefix_and_keyed_as_on_disk(
    collection, bucket, tmp_path
):
    name, client = bucket
    refs = [f"../imgs/{n}.png" for n in ORDER]  # relative to the table's prefix, as to its folder on disk
    (collection / "exports").mkdir()
    local = collection / "exports" / "catalogue.csv.gz"
    with gzip.open(local, "wt") as out:
        out.write("file,kind,year\n" + "".join(f"{r['file']},{r['kind']},{r['year']}\n" for r in rows_of(refs)))
    for n in range(10):
        client.upload_file(str(collection / "imgs" / f"{n}.png"), name, f"photos/imgs/{n}.png")
    client.upload_file(str(local), name, "photos/exports/catalogue.csv.gz")
    remote = settings(f"s3://{name}/photos/exports/catalogue.csv.gz")
    assert resolve_source(remote).kind == "table"
    check_source(remote)

    root = tmp_path / "root"
    result = run_dataset_stage(remote, root)
    snapshot = open_snapshot(root, result.manifest)
    assert [i["path"] for i in snapshot["image"]] == [f"s3://{name}/photos/imgs/{n}.png" for n in ORDER]
    assert result.manifest.stats["label_names"] == ["cat", "dog"] and snapshot["year"] == [2000 + n for n in ORDER]
    # the key is the rows and the images' content: the same table and images on disk are the same dataset
    assert result.manifest.key == dataset_key(settings(local), tmp_path / "other")[0]

    for missing in (f"s3://{name}/photos/exports/gone.csv", "s3://no-such-bucket/catalogue.csv"):
        with pytest.raises(DatasetError, match=r"^(no such table: s3://.*gone\.csv|dataset: bucket 'no-such-bucket')"):
            check_source(settings(missing))
