"""Scale-out: the embeddings stage's shards mapped over a local Dask cluster (prefect-dask).

Same files as the single-process stage, byte for byte, and a worker SIGKILLed mid-shard is
survived: Dask's nanny restarts it and the scheduler (or, failing that, the stage task's
retry) embeds the shards it left unwritten.
"""

from __future__ import annotations

import pytest
from test_resume import N_SHARDS, flow_runs_for, run, stage_files, task_run_history

from lookalike.core.manifest import find_manifest

DASK = ("--set", "embeddings.dask_workers=2")


@pytest.fixture(scope="module")
def single(tmp_path_factory, prefect_api_url):
    root = tmp_path_factory.mktemp("single") / "artifacts"
    return root, run(root, prefect_api_url)


def test_two_dask_workers_embed_the_same_shards_and_survive_a_killed_worker(single, prefect_api_url, tmp_path):
    root = tmp_path / "artifacts"
    marker = tmp_path / "killed"
    faults = {"kill_once_at_embed_batch": 2, "kill_marker": str(marker)}  # batch 2 of 2: mid-shard
    summary = run(root, prefect_api_url, faults, *DASK)

    assert marker.exists(), "no worker was killed: the test proved nothing"
    reference_root, reference = single
    assert summary["stages"]["embeddings"]["key"] == reference["stages"]["embeddings"]["key"]
    assert stage_files(root, summary, "embeddings") == stage_files(reference_root, reference, "embeddings")
    assert stage_files(root, summary, "index") == stage_files(reference_root, reference, "index")

    stats = find_manifest(root, "embeddings", summary["stages"]["embeddings"]["key"]).stats
    assert stats["shards_computed"] == N_SHARDS and stats["workers"] >= 2, stats
    history = task_run_history(flow_runs_for(root)[0].id)
    groups = [name for name in history if name.startswith("embed-shards-")]
    assert len(groups) == N_SHARDS, history.keys()
    assert all(states[-1][-1] == "Completed" for name in groups for states in [history[name]])
