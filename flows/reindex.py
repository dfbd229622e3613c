"""The `reindex` flow: new images, the production encoder, a new index. No pretraining.

For when images arrive between retrains: the dataset is snapshotted, the encoder the
`production` alias points at is reused as it is (status `cached`), and embeddings,
index, evaluation (and the mirror) are built for the new images.
"""

from __future__ import annotations

from typing import Any, Optional

from prefect import flow

from lookalike.artifacts.aliases import PRODUCTION
from lookalike.core.settings import DatasetSettings, IndexPreset, IndexSettings, RunRequest
from lookalike.flows._indexing import index_and_publish, snapshot_queries
from lookalike.flows.retrieval import TRACKING_HOOKS, _default
from lookalike.stages.dataset.listing import one_listing_per_run
from lookalike.tasks.artifacts import open_artifacts_root
from lookalike.tasks.dataset import snapshot_dataset
from lookalike.tasks.encoder import use_aliased_encoder
from lookalike.tasks.secrets import load_secret_blocks
from lookalike.tasks.stage import call_stage
from lookalike.tasks.tracking import start_tracking, track_stage


@flow(name="reindex", **TRACKING_HOOKS)
def reindex(
    dataset: str = _default(DatasetSettings, "source"),
    split: str = _default(DatasetSettings, "split"),
    encoder_alias: str = PRODUCTION,
    index: IndexPreset = _default(IndexSettings, "type"),
    index_factory: Optional[str] = None,
    artifacts_root: Optional[str] = None,
    mirror: Optional[str] = None,
    promote: bool = True,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Index new images with an existing encoder, without pretraining.

    Args:
        dataset: The images to index: 'sample', a hub dataset name, or a path on the worker
            (image folder, .parquet file, save_to_disk folder).
        split: Dataset split to index, e.g. 'train'.
        encoder_alias: Alias whose encoder embeds the images ('production' = the last promoted retrain).
        index: FAISS index preset, or auto: the fastest that fits overrides["index.memory_budget"] and reaches
            overrides["index.recall_target"] (measured on held-out queries).
        index_factory: Expert: a raw FAISS factory string (prefix 'ip:' for inner product); replaces index.
        artifacts_root: Folder on the worker that holds every stage folder, or s3://bucket/prefix to share
            them (and cached results) between machines (empty: the worker's LOOKALIKE_ARTIFACTS_ROOT, else ./artifacts).
        mirror: s3://bucket/prefix to mirror finished stage folders to (empty: the worker's setting, else off).
        promote: Move the 'production' alias to the new index when the run completes.
        overrides: Any other setting by dotted name, e.g. {"embeddings.batch_size": 512}.
    """
    request = RunRequest(
        dataset=dataset,
        split=split,
        index=index,
        index_factory=index_factory,
        artifacts_root=artifacts_root,
        mirror=mirror,
        overrides=overrides or {},
    )
    request.check()
    settings = request.settings()
    load_secret_blocks(settings)
    root = open_artifacts_root(settings)
    tracking = start_tracking(settings)

    # One walk of a local collection answers the stage key, the snapshot and the query split.
    with one_listing_per_run():
        reports, stage_runs = {}, {}
        reports["dataset"] = call_stage(snapshot_dataset, section=settings.dataset, root=root)
        stage_runs["dataset"] = track_stage(settings, tracking, reports, "dataset")
        queries = snapshot_queries(settings)
        reports["encoder"] = use_aliased_encoder(root, encoder_alias)
        return index_and_publish(settings, reports, tracking, promote, queries, stage_runs)
