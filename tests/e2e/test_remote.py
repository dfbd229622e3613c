"""Loading an index by reference from its S3 mirror (moto's threaded HTTP server, not the
in-process mock): fetched into an empty cache, every file checked against its manifest."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import LOOKALIKE, TINY, cli_env, flow_arguments, server_errors

from lookalike.artifacts.mirror import fetch_index_chain
from lookalike.artifacts.s3 import MirrorError, s3_client
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.graph import CHAIN, STAGE_NAMES
from lookalike.core.manifest import MANIFEST, IntegrityError, has_size, part_entries, parts_dir, sha256_file, stage_dir

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, s3_endpoint):
    """A TINY run mirrored to S3 with the default `mirror.stages`: the whole chain."""
    from lookalike.flows.retrieval import retrieval_pipeline

    s3_client(s3_endpoint).create_bucket(Bucket="remote")
    root = tmp_path_factory.mktemp("remote") / "artifacts"
    summary = retrieval_pipeline(
        **flow_arguments(
            {
                "artifacts_root": str(root),
                **TINY,
                "mirror.url": "s3://remote/team/lookalike",
                "mirror.endpoint_url": s3_endpoint,
            }
        ),
        promote=False,
    )
    mirrored = [m["url"].split("/")[-3] for m in summary["artifacts"]["mirror"]]
    assert mirrored == list(STAGE_NAMES), summary["artifacts"]["mirror"]
    keys = {stage: summary["stages"][stage]["key"] for stage in CHAIN}
    return root, keys, f"s3://remote/team/lookalike/index/{keys['index']}"


class CountingClient:
    """An S3 client that counts the objects it downloads."""

    def __init__(self, client) -> None:
        self.client, self.downloads = client, []

    def download_file(self, bucket, key, *args, **kwargs):
        self.downloads.append(key)
        return self.client.download_file(bucket, key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_an_s3_index_is_fetched_with_its_chain_into_an_empty_cache_and_answers_queries(mirrored, tmp_path, s3_endpoint):
    from lookalike.serving.query import Searcher
    from lookalike.serving.refs import index_chain

    root, keys, url = mirrored
    client = CountingClient(s3_client(s3_endpoint))
    local, key = fetch_index_chain(url, tmp_path / "cache", client=client)
    assert key == keys["index"] and local == tmp_path / "cache" / "s3" / "remote" / "team/lookalike"
    for stage in CHAIN:  # byte for byte the files the run's manifests list, and the manifests
        original = stage_dir(root, stage, keys[stage])
        fetched = stage_dir(local, stage, keys[stage])
        names = {f.path for f in read_manifest(root, stage, keys[stage]).files} | {MANIFEST}
        assert names == {p.name for p in fetched.iterdir()}
        assert all(sha256_file(original / n) == sha256_file(fetched / n) for n in names)
    parts = part_entries(stage_dir(local, "dataset", keys["dataset"]))  # the images the dataset version shares
    assert parts and all(has_size(parts_dir(local, "dataset") / p.path, p.bytes) for p in parts)
    assert len(client.downloads) == sum(len(list(stage_dir(local, s, keys[s]).iterdir())) - 1 for s in CHAIN) + len(
        parts
    )

    searcher = Searcher(local, index_chain(local, key))
    row = sorted(searcher.position)[5]
    assert searcher.neighbours(searcher.image_of_row(row), 3)[0]["row"] == row

    again = CountingClient(s3_client(s3_endpoint))
    fetch_index_chain(url, tmp_path / "cache", client=again)
    assert again.downloads == [], "a verified cache is not downloaded again"


def test_the_app_serves_an_s3_reference(mirrored, tmp_path, s3_endpoint):
    from lookalike.serving.holder import IndexHolder

    _, keys, url = mirrored
    holder = IndexHolder(tmp_path / "artifacts", url, endpoint_url=s3_endpoint)
    info = holder.info()
    assert (info["ref"], info["index"], info["alias"]) == (url, keys["index"], None)
    row = sorted(holder.searcher.position)[0]
    assert holder.by_row(row, 2)[1][0]["row"] == row


def test_the_run_mirrors_its_aliases_and_an_alias_url_loads_that_chain(mirrored, tmp_path, s3_endpoint):
    from lookalike.serving.holder import IndexHolder

    _, keys, url = mirrored
    alias_url = "s3://remote/team/lookalike/aliases/latest"
    stored = json.loads(
        s3_client(s3_endpoint).get_object(Bucket="remote", Key="team/lookalike/aliases/latest.json")["Body"].read()
    )
    assert {stage: stored["stages"][stage] for stage in CHAIN} == keys
    holder = IndexHolder(tmp_path / "artifacts", alias_url, endpoint_url=s3_endpoint)
    info = holder.info()
    assert (info["ref"], info["alias"], info["index"]) == (alias_url, "latest", keys["index"])
    with pytest.raises(MirrorError, match="aliases/production.json does not exist"):
        IndexHolder(tmp_path / "artifacts", alias_url.replace("latest", "production"), endpoint_url=s3_endpoint)


def test_an_index_folder_path_loads_from_the_root_it_sits_in(mirrored, tmp_path):
    from lookalike.serving.holder import IndexHolder, QueryError

    root, keys, _ = mirrored
    holder = IndexHolder(tmp_path / "elsewhere", str(root / "index" / keys["index"]))
    assert holder.info()["index"] == keys["index"] and holder.root == root.resolve()
    with pytest.raises(QueryError, match="not a finished index folder"):
        IndexHolder(tmp_path, str(root / "encoder" / keys["encoder"]))


def test_transient_server_errors_while_fetching_are_retried(mirrored, tmp_path, s3_endpoint):
    _, keys, url = mirrored
    client = s3_client(s3_endpoint)
    calls = server_errors(client, "GetObject", fail={1, 2, 4})  # manifest twice, then a file once
    local, key = fetch_index_chain(url, tmp_path / "cache", client=client)
    assert key == keys["index"] and len(calls) > 3
    assert (stage_dir(local, "dataset", keys["dataset"]) / MANIFEST).is_file()


def test_a_tampered_object_is_refused_and_never_left_in_the_cache(mirrored, tmp_path, s3_endpoint):
    root, keys, url = mirrored
    client = s3_client(s3_endpoint)
    bucket, prefix = "remote", "team/lookalike"
    copy = f"{prefix}-tampered"
    for obj in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
        client.copy_object(
            Bucket=bucket, Key=copy + obj["Key"][len(prefix) :], CopySource={"Bucket": bucket, "Key": obj["Key"]}
        )
    weights = f"{copy}/encoder/{keys['encoder']}/encoder.pt"
    data = bytearray(client.get_object(Bucket=bucket, Key=weights)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=weights, Body=bytes(data))

    with pytest.raises(IntegrityError, match="encoder.pt does not match its manifest"):
        fetch_index_chain(url.replace(prefix, copy), tmp_path / "cache", client=client)
    fetched = stage_dir(tmp_path / "cache" / "s3" / bucket / copy, "encoder", keys["encoder"])
    assert not (fetched / "encoder.pt").exists() and not (fetched / MANIFEST).exists()
    assert not [p for p in fetched.iterdir() if p.name.startswith(".")], "no temp file left behind"


def test_a_stage_that_was_not_mirrored_says_which_setting_mirrors_it(mirrored, tmp_path, s3_endpoint):
    _, keys, url = mirrored
    client = s3_client(s3_endpoint)
    only_index = "team/index-only"
    for obj in client.list_objects_v2(Bucket="remote", Prefix="team/lookalike/index/")["Contents"]:
        client.copy_object(
            Bucket="remote",
            Key=obj["Key"].replace("team/lookalike", only_index),
            CopySource={"Bucket": "remote", "Key": obj["Key"]},
        )
    with pytest.raises(MirrorError, match=r"embeddings/.*is not in the mirror.*mirror.stages"):
        fetch_index_chain(url.replace("team/lookalike", only_index), tmp_path / "cache", client=client)


@pytest.mark.parametrize(
    "url",
    [
        "s3://remote/team/lookalike",
        "s3://remote/index/",
        "s3://remote/x/index/a/b",
        "s3://remote/xindex/abc",
        "https://remote/index/abc",
    ],
)
def test_a_url_that_names_no_index_is_one_clear_error(url, tmp_path):
    with pytest.raises(MirrorError, match="s3://bucket/prefix"):
        fetch_index_chain(url, tmp_path, client=object())
    assert not any(tmp_path.iterdir())


def test_lookalike_query_by_s3_reference_on_a_machine_without_the_artifacts(mirrored, tmp_path, s3_endpoint):
    from lookalike.stages.dataset.stage import open_snapshot, row_positions

    root, keys, url = mirrored
    row = sorted(row_positions(open_snapshot(root, read_manifest(root, "dataset", keys["dataset"]))))[3]
    env = cli_env(tmp_path, extra={"AWS_ENDPOINT_URL_S3": s3_endpoint})  # boto3's own variable
    for n, ref in enumerate([url, "s3://remote/team/lookalike/aliases/latest"]):
        empty_root = tmp_path / f"elsewhere-{n}"
        done = subprocess.run(
            [
                LOOKALIKE,
                "query",
                "--row",
                str(row),
                "--index",
                ref,
                "--json",
                "--top-k",
                "3",
                "--artifacts-root",
                str(empty_root),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["index"] == keys["index"] and answer["neighbours"][0]["row"] == row
        fetched = empty_root / "remote" / "s3" / "remote" / "team/lookalike"
        assert (fetched / "index" / keys["index"] / MANIFEST).is_file()


def test_a_server_on_an_s3_alias_follows_it_when_a_later_run_moves_it(mirrored, tmp_path, s3_endpoint):
    """Runs last in this module: it moves `latest` on S3 to a new index."""
    from lookalike.flows.retrieval import retrieval_pipeline
    from lookalike.serving.holder import IndexHolder

    root, keys, _ = mirrored
    holder = IndexHolder(
        tmp_path / "artifacts", "s3://remote/team/lookalike/aliases/latest", poll_seconds=0.1, endpoint_url=s3_endpoint
    )
    assert holder.info()["index"] == keys["index"] and holder.reload() is False  # nothing moved yet
    moved = retrieval_pipeline(
        **flow_arguments(
            {
                "artifacts_root": str(root),
                **TINY,
                "index.type": "hnsw",
                "mirror.url": "s3://remote/team/lookalike",
                "mirror.endpoint_url": s3_endpoint,
            }
        ),
        promote=False,
    )
    new = moved["stages"]["index"]["key"]
    assert new != keys["index"] and moved["stages"]["embeddings"]["status"] == "cached"
    assert holder.reload() is True
    info = holder.info()
    assert (info["alias"], info["index"], info["reload_error"]) == ("latest", new, None)
    row = int(holder.searcher.snapshot[0]["row_id"])
    assert holder.by_row(row, 3)[0] == new  # queries are answered by the new index
