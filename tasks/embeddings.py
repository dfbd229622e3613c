"""Task: batched embedding into resumable shards (the `embeddings` stage).

Retries (count from `embeddings.retries`, set by the flow) re-run the stage, which
embeds only the shards without a completion marker. Images an earlier embeddings stage
with the same encoder already embedded are taken from it by content hash (the log says
how many, and which earlier stage files failed verification and were not used).

Scale-out: with `embeddings.dask_workers` (a local cluster) or `embeddings.dask_address`
(a running one), the stage task maps `embed_shard_group` over its missing shards through
prefect-dask's DaskTaskRunner, one Prefect task run per group, each writing its own shard
files; the stage task holds the stage lock meanwhile and writes the manifest once every
shard exists. A worker that dies mid-shard is replaced by Dask's nanny and its task
rescheduled; whatever still fails is left to the stage task's retries, which dispatch only
the shards still missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from lookalike.artifacts.shared_root import Store, open_stage_copy, store_at
from lookalike.artifacts.stage_runner import StageResult
from lookalike.core.extras import import_extra
from lookalike.core.manifest import Manifest
from lookalike.core.settings import EmbeddingsSettings
from lookalike.stages.embeddings.stage import embed_shards, embeddings_key, run_embeddings_stage
from lookalike.tasks.progress import progress_artifacts
from lookalike.tasks.stage import stage_options


@task(name="embed-shards", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def embed_shard_group(
    section: EmbeddingsSettings,
    dataset: Manifest,
    encoder: Manifest,
    root: Path,
    folder: Path,
    shards: list[int],
    store: Store | None = None,
) -> dict[str, Any]:
    """One Dask task: embed and write these shards of the stage folder. With a shared store the
    worker, wherever it runs, works in its own copy of it and uploads each shard it writes."""
    if store is not None:
        root, folder = open_stage_copy(
            store, "embeddings", folder.name, {"dataset": dataset.key, "encoder": encoder.key}
        )
    with progress_artifacts():
        return embed_shards(section, dataset, encoder, root, folder, shards, in_cluster=True)


def dask_dispatch(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest, root: Path):
    """A `ShardDispatch` that maps `embed_shard_group` over a Dask cluster."""
    DaskTaskRunner = import_extra("prefect_dask", "embeddings.dask_workers / embeddings.dask_address").DaskTaskRunner

    # distributed logs "Batched Comm Closed" at INFO *with its traceback* when a worker's comm closes
    # as the cluster shuts down (or a killed worker's nanny restarts it): routine, yet it printed a
    # Traceback at the end of a successful run. Its warnings and errors still show.
    logging.getLogger("distributed.batched").setLevel(logging.WARNING)

    if section.dask_address:
        runner = DaskTaskRunner(address=section.dask_address)
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": section.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )

    def dispatch(folder: Path, groups: list[list[int]]) -> list[dict[str, Any]]:
        get_run_logger().info(
            "embeddings: %d shard groups to %s",
            len(groups),
            section.dask_address or f"a local Dask cluster of {section.dask_workers} workers",
        )
        with runner:
            futures = [
                runner.submit(
                    embed_shard_group.with_options(task_run_name=f"embed-shards-{group[0]:05d}"),
                    {
                        "section": section,
                        "dataset": dataset,
                        "encoder": encoder,
                        "root": root,
                        "folder": folder,
                        "shards": group,
                        "store": store_at(root).config,
                    },
                )
                for group in groups
            ]
            return [future.result() for future in futures]

    return dispatch


@task(
    **stage_options("embeddings", lambda section, dataset, encoder, root: embeddings_key(section, dataset, encoder)),
    retries=EmbeddingsSettings.model_fields["retries"].default,  # the flow sets the configured count
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
)
def embed_images(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest, root: Path) -> StageResult:
    distributed = section.dask_workers or section.dask_address
    dispatch = dask_dispatch(section, dataset, encoder, root) if distributed else None
    with progress_artifacts():  # without Dask: the bar of the shards embedded in this task
        result = run_embeddings_stage(section, dataset, encoder, root, dispatch=dispatch)
    stats = result.manifest.stats
    get_run_logger().info(
        "embeddings %s: %d vectors of dim %d, %d/%d shards reused, %d images embedded (%s images/s), "
        "%d reused by content hash from %s",
        result.manifest.key,
        stats["n_vectors"],
        stats["dim"],
        stats["shards_reused"],
        stats["n_shards"],
        stats["images_embedded"],
        stats["images_per_second"],
        stats.get("images_reused", 0),
        ", ".join(stats.get("reused_from", [])) or "no earlier stage",
    )
    for rejected in stats.get("reuse_rejected", []) if result.status != "cached" else []:
        get_run_logger().warning(
            "embeddings %s: not reusing %s: %s", result.manifest.key, rejected["key"], rejected["reason"]
        )
    return result
