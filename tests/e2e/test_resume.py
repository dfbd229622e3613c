"""Kill and fail real `lookalike run` processes, then show the next run resumes exactly.

Faults are injected by `tests/faults/sitecustomize.py` (PYTHONPATH + FAULT_INJECTION),
so the processes under test run the installed `lookalike` command unchanged. They share
the session's Prefect server, so flow runs and task-run states can be inspected.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LOOKALIKE, REPO, TINY, cli_env, kill_when

from lookalike.core.manifest import MANIFEST, find_manifest, verified_path

PREFECT = str(Path(sys.executable).with_name("prefect"))

# 160 images in shards of 16: 10 shards of 2 batches each, 2 epochs of 10 steps.
SETTINGS = {**TINY, "dataset.limit": 160, "encoder.epochs": 2}
N_SHARDS = 10
SETS = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={value}")]


def start(root: Path, api_url: str | None, faults: dict | None = None, *extra: str) -> subprocess.Popen:
    """`lookalike run --json` in its own process group (so a kill takes any children too)."""
    return subprocess.Popen(
        [LOOKALIKE, "run", "--json", "--artifacts-root", str(root), *SETS, *extra],
        env=cli_env(root.parent, api_url, faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=600)
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return proc.returncode, summary, err


def run(root: Path, api_url: str | None, faults: dict | None = None, *extra: str) -> dict:
    code, summary, err = finish(start(root, api_url, faults, *extra))
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    return summary


def task_run_history(flow_run_id) -> dict[str, list[list[str]]]:
    """task name -> the state names of each of its task runs in this flow run, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    history: dict[str, list[list[str]]] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=100,
        )
        for task_run in reversed(runs):
            history.setdefault(task_run.name, []).append([s.name for s in client.read_task_run_states(task_run.id)])
    return history


def flow_runs_for(root: Path) -> list:
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=200)
    return [r for r in runs if r.parameters.get("artifacts_root") == str(root)]


def statuses(summary: dict) -> dict[str, str]:
    return {name: s["status"] for name, s in summary["stages"].items()}


def stage_files(root: Path, summary: dict, stage: str) -> dict[str, str]:
    """file -> sha256 of a finished stage, after verifying every file against its manifest."""
    manifest = find_manifest(root, stage, summary["stages"][stage]["key"])
    for entry in manifest.files:
        verified_path(root, manifest, entry.path)
    return {f.path: f.sha256 for f in manifest.files}


def markers(root: Path) -> list[Path]:
    return sorted(root.glob("embeddings/*/shard-*.json"))


def copy_stages(src: Path, dst: Path, *stages: str) -> None:
    for stage in stages:
        shutil.copytree(src / stage, dst / stage, ignore=shutil.ignore_patterns(".*.lock"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_api_url):
    """An uninterrupted run: what every resumed run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("reference") / "artifacts"
    return root, run(root, prefect_api_url)


def test_killed_during_embedding_resumes_shards_without_training(reference, prefect_api_url, tmp_path):
    ref_root, ref = reference
    root = tmp_path / "artifacts"
    proc = start(root, prefect_api_url, {"embed_slow_seconds": 0.3})
    kill_when(proc, lambda: len(markers(root)) >= 3)
    done_before = len(markers(root))
    assert done_before < N_SHARDS
    assert not list(root.glob(f"embeddings/*/{MANIFEST}")), "a killed stage must not look finished"

    again = run(root, prefect_api_url, {"forbid_training": True})  # any training step would raise
    assert statuses(again) == {
        "dataset": "cached",
        "encoder": "cached",
        "embeddings": "resumed",
        "index": "computed",
        "evaluation": "computed",
    }
    stats = find_manifest(root, "embeddings", again["stages"]["embeddings"]["key"]).stats
    assert stats["shards_reused"] >= done_before >= 1
    assert stats["shards_reused"] + stats["shards_computed"] == N_SHARDS
    assert again["stages"]["embeddings"]["reused"] == f"{stats['shards_reused']}/{N_SHARDS} shards"
    assert again["stages"]["encoder"]["key"] == ref["stages"]["encoder"]["key"]
    assert stage_files(root, again, "embeddings") == stage_files(ref_root, ref, "embeddings")
    assert stage_files(root, again, "index") == stage_files(ref_root, ref, "index")
    assert again["metrics"] == ref["metrics"]


def test_killed_during_pretraining_resumes_from_the_last_epoch(reference, prefect_api_url, tmp_path):
    ref_root, ref = reference
    root = tmp_path / "artifacts"
    copy_stages(ref_root, root, "dataset")
    proc = start(root, prefect_api_url, {"train_slow_seconds": 0.4})
    kill_when(proc, lambda: any(root.glob("encoder/*/train-state.pt")))
    assert not list(root.glob(f"encoder/*/{MANIFEST}"))

    again = run(root, prefect_api_url)
    assert statuses(again)["encoder"] == "resumed"
    assert again["stages"]["encoder"]["reused"] == "1/2 epochs"
    assert stage_files(root, again, "encoder") == stage_files(ref_root, ref, "encoder")
    assert stage_files(root, again, "index") == stage_files(ref_root, ref, "index")


def test_killed_while_writing_the_index_never_serves_a_torn_file(reference, prefect_api_url, tmp_path):
    ref_root, ref = reference
    root = tmp_path / "artifacts"
    copy_stages(ref_root, root, "dataset", "encoder", "embeddings")
    code, _, _ = finish(start(root, prefect_api_url, {"kill_in_index_write": True}))
    assert code == -signal.SIGKILL
    folder = root / "index" / ref["stages"]["index"]["key"]
    assert any(p.stat().st_size > 0 for p in folder.iterdir() if p.name.startswith(".")), "the torn temp file"
    assert not (folder / MANIFEST).exists() and not (folder / "index.faiss").exists()

    query = subprocess.run(
        [LOOKALIKE, "query", "--row", "0", "--artifacts-root", str(root), *SETS],
        env=cli_env(tmp_path, prefect_api_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert query.returncode != 0 and "lookalike run" in query.stderr and "Traceback" not in query.stderr

    again = run(root, prefect_api_url)
    assert statuses(again)["index"] == "computed"
    assert stage_files(root, again, "index") == stage_files(ref_root, ref, "index")


def test_a_native_crash_in_a_stage_is_one_error_line_naming_it_and_its_index_type(reference, prefect_api_url, tmp_path):
    """The next run resumes as after any kill (tests/cli/test_crash.py shows it at the stage runner)."""
    ref_root, ref = reference
    root = tmp_path / "artifacts"
    copy_stages(ref_root, root, "dataset", "encoder", "embeddings", "index")
    code, _, err = finish(start(root, prefect_api_url, {"abort_in_evaluation": True}))
    assert code == -signal.SIGABRT
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == err.strip().splitlines()[-1:], err[-3000:]
    assert errors[0].startswith("error: the evaluation stage with index type flat-l2 (Flat) crashed in native code")
    assert not (root / "evaluation" / ref["stages"]["evaluation"]["key"] / MANIFEST).exists()
    shutil.rmtree(Path(errors[0].rsplit("Python traceback: ", 1)[1]).parent)  # the traceback kept for the user


def test_killed_during_upload_mirrors_only_what_is_missing(reference, prefect_api_url, tmp_path, s3_endpoint):
    from lookalike.artifacts.s3 import s3_client

    ref_root, ref = reference
    root = tmp_path / "artifacts"
    copy_stages(ref_root, root, "dataset", "encoder", "embeddings", "index", "evaluation")
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="upload-resume")  # its own bucket: the S3 server is shared by the session
    mirror = [
        "--mirror",
        "s3://upload-resume/runs",
        "--set",
        f"mirror.endpoint_url={s3_endpoint}",
        "--set",
        'mirror.stages=["embeddings", "index"]',
    ]
    code, _, _ = finish(start(root, prefect_api_url, {"kill_after_uploads": 4}, *mirror))
    assert code == -signal.SIGKILL
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="upload-resume").get("Contents", [])}
    assert len(keys) == 4 and not any(k.endswith(MANIFEST) for k in keys)  # 4 of 11 embeddings files

    again = run(root, prefect_api_url, None, *mirror)
    embeddings, index = again["artifacts"]["mirror"]
    assert (embeddings["skipped"], embeddings["uploaded"]) == (4, N_SHARDS + 1 - 4)
    assert (index["skipped"], index["uploaded"]) == (0, 2)  # index.faiss and metadata.parquet
    for stage in ("embeddings", "index"):
        client.head_object(Bucket="upload-resume", Key=f"runs/{stage}/{again['stages'][stage]['key']}/{MANIFEST}")
        for name, sha in stage_files(root, again, stage).items():
            head = client.head_object(
                Bucket="upload-resume", Key=f"runs/{stage}/{again['stages'][stage]['key']}/{name}"
            )
            assert head["Metadata"]["sha256"] == sha


def test_two_concurrent_runs_both_succeed_with_one_verified_output(reference, tmp_path):
    """Two terminals, same settings, default temporary Prefect servers: one computes, one waits."""
    ref_root, ref = reference
    root = tmp_path / "artifacts"
    procs = [start(root, None) for _ in range(2)]
    results = [finish(p) for p in procs]
    for code, _summary, err in results:
        assert code == 0, err[-3000:]
        assert "Traceback" not in err
    summaries = [summary for _, summary, _ in results]
    assert summaries[0]["stages"].keys() == summaries[1]["stages"].keys()
    for stage in ref["stages"]:
        keys = {s["stages"][stage]["key"] for s in summaries}
        assert keys == {ref["stages"][stage]["key"]}
        # as many folders as one run makes (dataset: the indexed split and the held-out query split)
        assert len(list((root / stage).glob(f"*/{MANIFEST}"))) == len(list((ref_root / stage).glob(f"*/{MANIFEST}")))
    for stage in ("encoder", "embeddings", "index"):
        assert stage_files(root, summaries[0], stage) == stage_files(ref_root, ref, stage)
    assert {s["stages"]["encoder"]["status"] for s in summaries} == {"computed", "cached"}


def test_flow_run_failed_on_embedding_is_retried_through_the_api(prefect_api_url, tmp_path):
    """`prefect flow-run retry` sets the failed run back to Scheduled through the API (as the
    UI's Retry does) and runs it again: pretraining is Cached, embedding resumes."""
    root = tmp_path / "artifacts"
    no_retries = ("--set", "embeddings.retries=0")  # fail the flow run at the first failure
    code, _, err = finish(start(root, prefect_api_url, {"embed_fail_at_batch": 3}, *no_retries))
    assert code == 1 and "injected embedding failure" in err
    assert "run the same command again to resume" in err.splitlines()[-1]

    failed = flow_runs_for(root)
    assert len(failed) == 1 and failed[0].state.is_failed()
    flow_run_id = failed[0].id

    retry = subprocess.run(
        [PREFECT, "flow-run", "retry", str(flow_run_id), "--entrypoint", "flows/retrieval.py:retrieval_pipeline"],
        cwd=REPO,
        env=cli_env(tmp_path, prefect_api_url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert retry.returncode == 0, retry.stdout[-3000:] + retry.stderr[-3000:]

    (flow_run,) = flow_runs_for(root)
    assert flow_run.id == flow_run_id and flow_run.state.is_completed() and flow_run.run_count == 2
    history = task_run_history(flow_run_id)
    assert history["encoder"] == [["Pending", "Running", "Completed"], ["Pending", "Running", "Cached"]]
    assert history["embeddings"] == [["Pending", "Running", "Failed"], ["Pending", "Running", "Completed"]]
    embeddings = find_manifest(root, "embeddings", next(root.glob("embeddings/*/manifest.json")).parent.name)
    assert embeddings.stats["shards_reused"] == 1  # batch 3 failed: shard 0 (batches 1-2) was done


def test_embedding_failure_is_retried_in_the_same_flow_run_reusing_shards(prefect_api_url, tmp_path):
    root = tmp_path / "artifacts"
    summary = run(root, prefect_api_url, {"embed_fail_at_batch": 3, "embed_fail_attempts": 1})
    assert statuses(summary)["embeddings"] == "resumed"
    (flow_run,) = flow_runs_for(root)
    history = task_run_history(flow_run.id)
    assert history["encoder"] == [["Pending", "Running", "Completed"]]  # pretraining ran once
    assert history["embeddings"] == [["Pending", "Running", "AwaitingRetry", "Retrying", "Completed"]]
    stats = find_manifest(root, "embeddings", summary["stages"]["embeddings"]["key"]).stats
    assert (stats["shards_reused"], stats["shards_computed"]) == (1, N_SHARDS - 1)
    assert stats["images_embedded"] == 160 - 16  # shard 0 was not embedded again
