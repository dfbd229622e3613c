"""`artifacts_root=s3://bucket/prefix`: stage folders and Prefect's results shared through a
bucket (moto's threaded HTTP server), each "machine" working in its own local copy.

Machines are told apart by `artifacts_cache`: a run with another cache has none of the first
run's files and must get them from the bucket, verified, or resume from what it left there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import TINY, flow_arguments

from lookalike.artifacts.s3 import s3_client
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.graph import STAGE_NAMES
from lookalike.core.manifest import MANIFEST, find_manifest, verified_path

BUCKET, PREFIX = "shared", "team/lookalike"
URL = f"s3://{BUCKET}/{PREFIX}"
STAGES = STAGE_NAMES


def run_on(machine: Path, endpoint: str, url: str = URL, return_state: bool = False, **extra):
    from lookalike.flows.retrieval import retrieval_pipeline

    return retrieval_pipeline(
        **flow_arguments(
            {
                **TINY,
                "artifacts_root": url,
                "artifacts_cache": str(machine),
                "mirror.endpoint_url": endpoint,
                **extra,
            }
        ),
        return_state=return_state,
    )


def objects(client, prefix: str, bucket: str = BUCKET) -> dict[str, dict]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.update({o["Key"][len(prefix) :]: o for o in page.get("Contents", [])})
    return found


def copy_of(machine: Path, url: str = URL) -> Path:
    from lookalike.core.settings import working_copy

    return working_copy(url, machine)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, s3_endpoint):
    """One whole run on machine A with its artifacts root in the bucket."""
    s3_client(s3_endpoint).create_bucket(Bucket=BUCKET)
    machine_a = tmp_path_factory.mktemp("machine-a")
    summary = run_on(machine_a, s3_endpoint)
    return machine_a, summary


def test_settings_turn_an_s3_root_into_a_store_and_a_local_copy(tmp_path):
    from lookalike.core.settings import SettingsError, load_settings, run_parameters

    settings = load_settings({"artifacts_root": "s3://bucket/some/prefix/", "artifacts_cache": str(tmp_path)})
    assert settings.artifacts_store == "s3://bucket/some/prefix"
    assert settings.artifacts_root == tmp_path / "s3" / "bucket" / "some" / "prefix"
    assert run_parameters(settings)["artifacts_root"] == "s3://bucket/some/prefix"  # what a flow run gets
    with pytest.raises(SettingsError, match="s3://bucket/prefix"):
        load_settings({"artifacts_root": "s3:///no-bucket"})
    with pytest.raises(SettingsError, match="artifacts_root only"):
        load_settings({"artifacts_root": "s3://a/x", "artifacts_store": "s3://b/y"})
    assert load_settings({"artifacts_root": str(tmp_path)}).artifacts_store is None


def test_every_finished_stage_folder_is_in_the_bucket_and_no_partial_objects_stay(shared, s3_endpoint):
    machine_a, summary = shared
    client = s3_client(s3_endpoint)
    for stage in STAGES:
        manifest = find_manifest(copy_of(machine_a), stage, summary["stages"][stage]["key"])
        there = objects(client, f"{PREFIX}/{stage}/{manifest.key}/")
        # exactly the manifest's files (shard markers and train-state were partial) and the manifest
        assert set(there) == {f.path for f in manifest.files} | {MANIFEST}, stage
        for entry in manifest.files:
            assert there[entry.path]["Size"] == entry.bytes
            head = client.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{stage}/{manifest.key}/{entry.path}")
            assert head["Metadata"]["sha256"] == entry.sha256
        body = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{stage}/{manifest.key}/{MANIFEST}")["Body"].read()
        assert json.loads(body)["key"] == manifest.key
    alias = json.loads(client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/aliases/latest.json")["Body"].read())
    assert alias["stages"]["index"] == summary["stages"]["index"]["key"]


def test_prefect_results_live_in_the_bucket_under_the_stage_cache_keys(shared, s3_endpoint):
    _, summary = shared
    results = objects(s3_client(s3_endpoint), f"{PREFIX}/prefect-results/")
    digest = hashlib.sha256(URL.encode()).hexdigest()[:8]
    for stage in STAGES:
        assert f"{stage}-{summary['stages'][stage]['key']}-{digest}" in results, sorted(results)


def test_a_run_on_another_machine_is_cached_from_the_bucket_with_verified_copies(shared, s3_endpoint, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    machine_a, first = shared
    machine_b = tmp_path / "machine-b"
    state = run_on(machine_b, s3_endpoint, return_state=True)
    again = state.result()
    assert {n: s["status"] for n, s in again["stages"].items()} == dict.fromkeys(STAGES, "cached")
    with get_client(sync_client=True) as client:  # Prefect found each stage's result in the bucket
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    by_name = {r.name: r.state.name for r in runs}
    assert all(by_name[stage] == "Cached" for stage in STAGES), by_name
    for stage in STAGES:  # and machine B's copy holds every file, each matching its manifest
        key = again["stages"][stage]["key"]
        assert key == first["stages"][stage]["key"]
        manifest = find_manifest(copy_of(machine_b), stage, key)
        hashes = {e.path: verified_path(copy_of(machine_b), manifest, e.path) and e.sha256 for e in manifest.files}
        assert hashes == {e.path: e.sha256 for e in read_manifest(copy_of(machine_a), stage, key).files}


def test_a_stage_finished_only_in_the_bucket_is_fetched_when_read(shared, s3_endpoint, tmp_path):
    from lookalike.artifacts.shared_root import Store, open_store
    from lookalike.core.settings import load_settings

    _, summary = shared
    settings = load_settings({"artifacts_root": URL, "artifacts_cache": str(tmp_path)})
    root = open_store(Store(URL, s3_endpoint, str(tmp_path)))
    assert root == settings.artifacts_root and (root / "aliases" / "latest.json").is_file()
    key = summary["stages"]["index"]["key"]
    assert find_manifest(root, "index", key) is None
    manifest = read_manifest(root, "index", key)
    verified_path(root, manifest, manifest.files[0].path)


@pytest.mark.slow
def test_a_run_killed_on_one_machine_resumes_on_another_from_the_bucket(s3_endpoint, prefect_api_url, tmp_path):
    """Machine A is SIGKILLed mid-embedding; machine B (empty cache, its own PREFECT_HOME, the
    same Prefect server) gets Prefect's cached dataset and encoder results and the finished
    shards from the bucket, trains nothing and embeds only the shards A did not finish."""
    import subprocess

    from helpers import LOOKALIKE, cli_env, kill_when
    from test_resume import N_SHARDS, SETS, finish, flow_runs_for, task_run_history

    url = "s3://resume/lookalike"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="resume")

    def start(machine: Path, faults: dict, *extra: str):
        env = cli_env(
            machine,
            prefect_api_url,
            faults,
            {
                "LOOKALIKE_ARTIFACTS_CACHE": str(machine / "cache"),
                "LOOKALIKE_MIRROR__ENDPOINT_URL": s3_endpoint,
                "LOOKALIKE_ARTIFACTS_LEASE_SECONDS": "3",
            },
        )  # A dies holding the embeddings lease: B waits this long
        return subprocess.Popen(
            [LOOKALIKE, "run", "--json", "--artifacts-root", url, *SETS, *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def shards_in_bucket() -> int:
        return sum(name.endswith(".json") for name in objects(client, "lookalike/embeddings/", "resume"))

    proc = start(tmp_path / "machine-a", {"embed_slow_seconds": 0.3})
    kill_when(proc, lambda: shards_in_bucket() >= 3)
    done_before = shards_in_bucket()
    assert done_before < N_SHARDS
    assert not [k for k in objects(client, "lookalike/embeddings/", "resume") if k.endswith(MANIFEST)]

    # machine B also hands its shards to a local Dask cluster: its workers fetch the inputs from
    # the bucket into their copy and upload each shard they write
    code, summary, err = finish(
        start(tmp_path / "machine-b", {"forbid_training": True}, "--set", "embeddings.dask_workers=2")
    )
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    assert {n: s["status"] for n, s in summary["stages"].items()} == {
        "dataset": "cached",
        "encoder": "cached",
        "embeddings": "resumed",
        "index": "computed",
        "evaluation": "computed",
    }
    stats = summary["stages"]["embeddings"]
    reused, total = (int(n) for n in stats["reused"].split(" ")[0].split("/"))
    assert total == N_SHARDS and reused >= done_before
    embeddings = find_manifest(
        copy_of(tmp_path / "machine-b" / "cache", url), "embeddings", summary["stages"]["embeddings"]["key"]
    )
    assert embeddings.stats["workers"], embeddings.stats  # the shards B computed came from the Dask workers
    there = objects(client, f"lookalike/embeddings/{embeddings.key}/", "resume")
    assert set(there) == {f.path for f in embeddings.files} | {MANIFEST}  # the markers were partial
    history = task_run_history(flow_runs_for(url)[0].id)  # machine B's flow run, the newest
    assert history["encoder"] == [["Pending", "Running", "Cached"]]
    assert history["dataset"] == [["Pending", "Running", "Cached"]]


def test_lookalike_query_on_a_third_machine_reads_the_index_from_the_bucket(shared, s3_endpoint, tmp_path):
    import subprocess

    from helpers import LOOKALIKE, cli_env

    from lookalike.stages.dataset.stage import open_snapshot, row_positions

    machine_a, summary = shared
    dataset = read_manifest(copy_of(machine_a), "dataset", summary["stages"]["dataset"]["key"])
    row = sorted(row_positions(open_snapshot(copy_of(machine_a), dataset)))[3]
    machine_c = tmp_path / "machine-c"
    env = cli_env(
        machine_c,
        extra={"LOOKALIKE_ARTIFACTS_CACHE": str(machine_c / "cache"), "LOOKALIKE_MIRROR__ENDPOINT_URL": s3_endpoint},
    )
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    out = subprocess.run(
        [LOOKALIKE, "query", "--row", str(row), "--json", "--index", "latest", "--artifacts-root", URL, *sets],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["index"] == summary["stages"]["index"]["key"] and found["neighbours"][0]["row"] == row, found
    assert find_manifest(copy_of(machine_c / "cache"), "index", found["index"]) is not None


def test_a_missing_bucket_is_one_clear_error_before_anything_runs(s3_endpoint, tmp_path):
    import subprocess

    from helpers import LOOKALIKE, cli_env

    env = cli_env(
        tmp_path,
        extra={"LOOKALIKE_ARTIFACTS_CACHE": str(tmp_path / "cache"), "LOOKALIKE_MIRROR__ENDPOINT_URL": s3_endpoint},
    )
    out = subprocess.run(
        [LOOKALIKE, "query", "--row", "0", "--artifacts-root", "s3://no-such-bucket/x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: bucket 'no-such-bucket' does not exist"), out.stderr
    assert "aws s3 mb s3://no-such-bucket" in out.stderr


def test_two_machines_building_one_stage_at_once_compute_it_once(s3_endpoint, tmp_path):
    """Machines A and B start the same encoder stage together (threads, each with its own copy):
    one takes the store's lease and trains, the other waits and fetches its result."""
    import threading

    from lookalike.artifacts.shared_root import open_root
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.encoder.stage import run_encoder_stage

    s3_client(s3_endpoint).create_bucket(Bucket="together")
    overrides = {
        **TINY,
        "artifacts_root": "s3://together/x",
        "mirror.endpoint_url": s3_endpoint,
        "encoder.epochs": 2,
        "artifacts_lease_seconds": 3.0,
    }  # renewed every second while the holder trains
    machines = {name: load_settings({**overrides, "artifacts_cache": str(tmp_path / name)}) for name in "AB"}
    roots = {name: open_root(settings) for name, settings in machines.items()}
    dataset = run_dataset_stage(machines["A"].dataset, roots["A"]).manifest
    results, start = {}, threading.Barrier(2)

    def build(name: str) -> None:
        start.wait()
        results[name] = run_encoder_stage(machines[name].encoder, dataset, roots[name])

    threads = [threading.Thread(target=build, args=(name,)) for name in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(r.status for r in results.values()) == ["cached", "computed"], results
    assert len({r.manifest.file("encoder.pt").sha256 for r in results.values()}) == 1
    assert len({r.manifest.created for r in results.values()}) == 1  # one manifest: nobody trained twice
    left = objects(s3_client(s3_endpoint), "x/encoder/", "together")
    assert not [k for k in left if k.endswith(".lease")], left


def test_a_lease_left_by_a_killed_machine_is_taken_over_once_it_stops_changing(s3_endpoint, tmp_path):
    import time

    from lookalike.artifacts.shared_root import LEASE, open_root
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import dataset_key, run_dataset_stage

    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="stale")
    settings = load_settings(
        {
            **TINY,
            "artifacts_root": "s3://stale/x",
            "mirror.endpoint_url": s3_endpoint,
            "artifacts_cache": str(tmp_path),
            "artifacts_lease_seconds": 2.0,
        }
    )
    key = dataset_key(settings.dataset)[0]
    client.put_object(Bucket="stale", Key=f"x/dataset/{key}/{LEASE}", Body=b'{"host": "dead", "pid": 1}')
    started = time.monotonic()
    result = run_dataset_stage(settings.dataset, open_root(settings))
    waited = time.monotonic() - started
    assert result.status == "computed" and waited >= 2.0, waited
    assert f"x/dataset/{key}/{MANIFEST}" in {o["Key"] for o in client.list_objects_v2(Bucket="stale")["Contents"]}
