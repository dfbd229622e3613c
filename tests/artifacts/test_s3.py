"""S3 mirror against moto's threaded HTTP server (a real endpoint, not the in-process mock)."""

import pytest
from helpers import server_errors

from lookalike.artifacts.mirror import mirror_stage
from lookalike.artifacts.s3 import MirrorError, s3_client
from lookalike.core.manifest import write_manifest
from lookalike.core.settings import MirrorSettings


@pytest.fixture
def bucket(s3_endpoint, request):
    name = request.node.name.replace("_", "-")[:50].lower()
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def finished_folder(root, stage="index", key="k1"):
    folder = root / stage / key
    folder.mkdir(parents=True)
    (folder / "index.faiss").write_bytes(b"x" * 1000)
    (folder / "notes.txt").write_text("hello")
    return write_manifest(
        folder,
        stage=stage,
        key=key,
        code_version=1,
        settings={},
        inputs={},
        files=["index.faiss", "notes.txt"],
        stats={},
        timings={},
    )


def test_mirror_uploads_files_with_sha256_then_manifest(tmp_path, s3_endpoint, bucket):
    manifest = finished_folder(tmp_path)
    section = MirrorSettings(url=f"s3://{bucket}/runs", endpoint_url=s3_endpoint)
    result = mirror_stage(section, tmp_path, manifest)
    assert result == {"url": f"s3://{bucket}/runs/index/k1/", "uploaded": 2, "skipped": 0, "bytes": 1005}
    client = s3_client(s3_endpoint)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["runs/index/k1/index.faiss", "runs/index/k1/manifest.json", "runs/index/k1/notes.txt"]
    head = client.head_object(Bucket=bucket, Key="runs/index/k1/index.faiss")
    assert head["Metadata"]["sha256"] == manifest.file("index.faiss").sha256


def test_second_mirror_uploads_only_what_is_missing(tmp_path, s3_endpoint, bucket):
    manifest = finished_folder(tmp_path)
    section = MirrorSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    mirror_stage(section, tmp_path, manifest)
    s3_client(s3_endpoint).delete_object(Bucket=bucket, Key="p/index/k1/notes.txt")
    again = mirror_stage(section, tmp_path, manifest)
    assert (again["uploaded"], again["skipped"]) == (1, 1)


def test_missing_bucket_is_a_mirror_error_naming_the_url(tmp_path, s3_endpoint):
    manifest = finished_folder(tmp_path)
    with pytest.raises(MirrorError, match="s3://no-such-bucket/x") as failed:
        mirror_stage(MirrorSettings(url="s3://no-such-bucket/x", endpoint_url=s3_endpoint), tmp_path, manifest)
    assert not failed.value.retryable  # a retry cannot create the bucket


def test_transient_500s_are_retried_by_botocore(tmp_path, s3_endpoint, bucket):
    manifest = finished_folder(tmp_path)
    client = s3_client(s3_endpoint)
    calls = server_errors(client, "PutObject", fail={1, 2})
    section = MirrorSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    result = mirror_stage(section, tmp_path, manifest, client=client)
    assert (result["uploaded"], len(calls)) == (2, 2 + 3)  # two 500s, then 2 files + manifest


def test_persistent_500s_fail_the_mirror_and_the_retry_uploads_only_the_rest(tmp_path, s3_endpoint, bucket):
    manifest = finished_folder(tmp_path)
    section = MirrorSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    client = s3_client(s3_endpoint)
    calls = server_errors(client, "PutObject", fail=set(range(2, 100)))  # every PUT after the first
    with pytest.raises(MirrorError, match="InternalError") as failed:
        mirror_stage(section, tmp_path, manifest, client=client)
    assert failed.value.retryable  # so a stage task pushing to an s3:// root is retried
    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(calls) == 1 + 5  # 1 try + 4 botocore retries (standard mode, backoff with jitter)
    assert keys == ["p/index/k1/index.faiss"]  # no manifest: the mirror is visibly incomplete
    again = mirror_stage(section, tmp_path, manifest)
    assert (again["uploaded"], again["skipped"]) == (1, 1)


def test_large_files_go_up_in_parts_and_come_back_verified_by_sha256(tmp_path, s3_endpoint, bucket, monkeypatch):
    """Above the threshold boto3's transfer manager uploads in parts; the multipart ETag is no
    content hash, so the loader checks the manifest's sha256 instead."""
    import os

    import lookalike.artifacts.s3 as storage
    from lookalike.artifacts.s3 import S3Location, fetch_stage

    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part size
    folder = tmp_path / "root" / "embeddings" / "k2"
    folder.mkdir(parents=True)
    (folder / "shard-00000.npy").write_bytes(os.urandom(11 * 1024 * 1024))
    manifest = write_manifest(
        folder,
        stage="embeddings",
        key="k2",
        code_version=1,
        settings={},
        inputs={},
        files=["shard-00000.npy"],
        stats={},
        timings={},
    )
    section = MirrorSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    assert mirror_stage(section, tmp_path / "root", manifest)["uploaded"] == 1
    client = s3_client(s3_endpoint)
    head = client.head_object(Bucket=bucket, Key="p/embeddings/k2/shard-00000.npy")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    fetched = fetch_stage(client, S3Location(bucket, "p"), "embeddings", "k2", tmp_path / "cache")
    copy = tmp_path / "cache" / "embeddings" / "k2" / "shard-00000.npy"
    assert fetched == manifest and copy.read_bytes() == (folder / "shard-00000.npy").read_bytes()


def version_with_parts(root, key, parts):
    """A dataset version that uses shared parts (name -> bytes), as the dataset stage writes one."""
    import hashlib
    import json

    shared = root / "dataset" / "parts"
    shared.mkdir(parents=True, exist_ok=True)
    listed = []
    for name, data in parts.items():
        (shared / name).write_bytes(data)
        listed.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "rows": 1})
    folder = root / "dataset" / key
    folder.mkdir(parents=True)
    (folder / "rows.arrow").write_bytes(key.encode())
    (folder / "parts.json").write_text(json.dumps({"format": 1, "parts": listed}))
    return write_manifest(
        folder,
        stage="dataset",
        key=key,
        code_version=1,
        settings={},
        inputs={},
        files=["rows.arrow", "parts.json"],
        stats={},
        timings={},
    )


def test_dataset_parts_travel_with_their_versions_once_each_and_verified(tmp_path, s3_endpoint, bucket):
    import hashlib
    import json

    def sha(text):
        return hashlib.sha256(text.encode()).hexdigest()

    from lookalike.artifacts.s3 import S3Location, fetch_stage
    from lookalike.core.manifest import IntegrityError, complete_manifest

    root = tmp_path / "root"
    first = version_with_parts(root, "v1", {"a.arrow": b"a" * 100})
    second = version_with_parts(root, "v2", {"a.arrow": b"a" * 100, "b.arrow": b"b" * 50})
    section = MirrorSettings(url=f"s3://{bucket}/p", endpoint_url=s3_endpoint)
    assert mirror_stage(section, root, first)["uploaded"] == 3  # rows, parts.json, part a
    pushed = mirror_stage(section, root, second)
    assert (pushed["uploaded"], pushed["skipped"], pushed["bytes"]) == (
        3,
        1,
        50 + second.file("rows.arrow").bytes + second.file("parts.json").bytes,
    )

    client, location = s3_client(s3_endpoint), S3Location(bucket, "p")
    assert fetch_stage(client, location, "dataset", "v2", tmp_path / "cache") == second
    assert (tmp_path / "cache" / "dataset" / "parts" / "b.arrow").read_bytes() == b"b" * 50
    assert json.loads((tmp_path / "cache" / "dataset" / "parts" / "b.json").read_text())["sha256"] == sha("b" * 50)
    (tmp_path / "cache" / "dataset" / "parts" / "b.arrow").unlink()
    assert complete_manifest(tmp_path / "cache", "dataset", "v2") is None  # a cache missing a part is refetched
    assert fetch_stage(client, location, "dataset", "v2", tmp_path / "cache") == second

    client.put_object(Bucket=bucket, Key="p/dataset/parts/b.arrow", Body=b"B" * 50)  # changed after publishing
    with pytest.raises(IntegrityError, match="parts/b.arrow does not match the sha256 parts.json records"):
        fetch_stage(client, location, "dataset", "v2", tmp_path / "other")
    assert not (tmp_path / "other" / "dataset" / "parts" / "b.arrow").exists()
    assert not (tmp_path / "other" / "dataset" / "v2" / "manifest.json").exists()
