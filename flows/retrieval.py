"""The `retrieval-pipeline` flow: dataset → encoder → embeddings → index → evaluation.

Reads settings once, wires the stage tasks, branches on the optional mirror. No
computation and no I/O of its own. Its parameters are what the Prefect UI's run form
shows: typed, with the settings' defaults, choices for method and index, and the
descriptions below.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from prefect import flow
from pydantic import NonNegativeInt

from lookalike.core.settings import (
    DatasetSettings,
    EncoderSettings,
    IndexPreset,
    IndexSettings,
    Method,
    RunRequest,
)
from lookalike.flows._indexing import index_and_publish, snapshot_queries
from lookalike.stages.dataset.listing import one_listing_per_run
from lookalike.tasks.artifacts import open_artifacts_root
from lookalike.tasks.dataset import snapshot_dataset
from lookalike.tasks.encoder import pretrain_encoder
from lookalike.tasks.secrets import load_secret_blocks
from lookalike.tasks.stage import call_stage
from lookalike.tasks.tracking import finish_tracking_run, start_tracking, track_stage

TRACKING_HOOKS = {
    "on_completion": [finish_tracking_run],
    "on_failure": [finish_tracking_run],
    "on_crashed": [finish_tracking_run],
    "on_cancellation": [finish_tracking_run],
}


def _default(section: type, field: str) -> Any:
    return section.model_fields[field].default


@flow(name="retrieval-pipeline", **TRACKING_HOOKS)
def retrieval_pipeline(
    dataset: str = _default(DatasetSettings, "source"),
    split: str = _default(DatasetSettings, "split"),
    method: Method = _default(EncoderSettings, "method"),
    steps: Union[NonNegativeInt, Literal["auto"]] = _default(EncoderSettings, "steps"),
    epochs: Optional[NonNegativeInt] = _default(EncoderSettings, "epochs"),
    index: IndexPreset = _default(IndexSettings, "type"),
    index_factory: Optional[str] = None,
    artifacts_root: Optional[str] = None,
    mirror: Optional[str] = None,
    promote: bool = True,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Build a searchable image-retrieval index and measure it.

    Args:
        dataset: 'sample' (bundled Fashion-MNIST), a hub dataset name such as 'food101', or a path
            on the worker: an image folder, a .parquet file or a save_to_disk folder.
        split: Dataset split to index, e.g. 'train'.
        method: Self-supervised pretraining method from LightlySSL, or distill (with overrides["encoder.teacher"]).
        steps: Pretraining optimizer steps (0 keeps the random initialisation); auto: a budget from the
            collection's size and the backbone's cost, recorded with its reason in the encoder manifest.
        epochs: Pretraining length in passes over the collection instead (empty: use steps).
        index: FAISS index preset, or auto: the fastest that fits overrides["index.memory_budget"] and reaches
            overrides["index.recall_target"] (measured on held-out queries).
        index_factory: Expert: a raw FAISS factory string (prefix 'ip:' for inner product); replaces index.
        artifacts_root: Folder on the worker that holds every stage folder, or s3://bucket/prefix to share
            them (and cached results) between machines (empty: the worker's LOOKALIKE_ARTIFACTS_ROOT, else ./artifacts).
        mirror: s3://bucket/prefix to mirror finished stage folders to (empty: the worker's setting, else off).
        promote: Move the 'production' alias to this run's index (and encoder) when it completes.
        overrides: Any other setting by dotted name, e.g. {"encoder.lr": 0.001, "dataset.limit": 1000}, or
            {"encoder.init": "hf:facebook/dinov2-small"} to start from pretrained weights.
    """
    request = RunRequest(
        dataset=dataset,
        split=split,
        method=method,
        steps=steps,
        epochs=epochs,
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
        reports["encoder"] = call_stage(
            pretrain_encoder, section=settings.encoder, dataset=reports["dataset"].manifest, root=root
        )
        stage_runs["encoder"] = track_stage(settings, tracking, reports, "encoder")
        return index_and_publish(settings, reports, tracking, promote, queries, stage_runs)
