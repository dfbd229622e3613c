"""The `retrieval-pipeline` flow: dataset → encoder → embeddings → index → evaluation.

Reads settings once, wires the stage tasks, branches on the optional mirror. No
computation and no I/O of its own.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from prefect import flow

from lib.config import settings_for_run
from lib.summary import build_summary
from tasks.dataset import snapshot_dataset
from tasks.embeddings import embed_images
from tasks.encoder import pretrain_encoder
from tasks.evaluation import evaluate_index
from tasks.index import build_index
from tasks.mirror import mirror_to_s3
from tasks.report import publish_report
from tasks.stage import call_stage
from tasks.tracking import finish_tracking_run, open_tracking_run, publish_to_wandb


@flow(
    name="retrieval-pipeline",
    on_completion=[finish_tracking_run],
    on_failure=[finish_tracking_run],
    on_crashed=[finish_tracking_run],
    on_cancellation=[finish_tracking_run],
)
def retrieval_pipeline(
    dataset: Optional[str] = None,
    split: Optional[str] = None,
    method: Optional[Literal["dino", "simclr", "byol"]] = None,
    epochs: Optional[int] = None,
    index: Optional[str] = None,
    artifacts_root: Optional[str] = None,
    mirror: Optional[str] = None,
    overrides: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Build a searchable image-retrieval index and measure it.

    Empty parameters fall back to LOOKALIKE_* environment variables, then defaults.

    Args:
        dataset: 'sample' (bundled Fashion-MNIST), a hub dataset name such as 'food101',
            an image folder, a .parquet file or a save_to_disk folder.
        split: Dataset split to index, e.g. 'train'.
        method: Self-supervised pretraining method from LightlySSL.
        epochs: Pretraining epochs (0 keeps the random initialisation).
        index: FAISS index preset (flat-l2, flat-ip, hnsw, sq8, sq-fp16) or a factory string.
        artifacts_root: Folder (on the worker) that holds every stage folder.
        mirror: s3://bucket/prefix to mirror finished stage folders to.
        overrides: Any other setting by dotted name, e.g. {"encoder.lr": 0.001}.
    """
    settings = settings_for_run(
        overrides, dataset=dataset, split=split, method=method, epochs=epochs, index=index,
        artifacts_root=artifacts_root, mirror=mirror,
    )
    root = settings.artifacts_root
    tracking = open_tracking_run(settings)

    reports = {}
    reports["dataset"] = call_stage(snapshot_dataset, section=settings.dataset, root=root)
    reports["encoder"] = call_stage(pretrain_encoder, section=settings.encoder, dataset=reports["dataset"].manifest, root=root)
    reports["embeddings"] = call_stage(
        embed_images.with_options(retries=settings.embeddings.retries), section=settings.embeddings,
        dataset=reports["dataset"].manifest, encoder=reports["encoder"].manifest, root=root,
    )
    reports["index"] = call_stage(build_index, section=settings.index, embeddings=reports["embeddings"].manifest, root=root)
    reports["evaluation"] = call_stage(
        evaluate_index, section=settings.evaluation, dataset=reports["dataset"].manifest,
        embeddings=reports["embeddings"].manifest, index=reports["index"].manifest, root=root,
    )

    mirrored = None
    if settings.mirror.url:
        stages = [reports[s].manifest for s in settings.mirror.stages if s in reports]
        mirror_task = mirror_to_s3.with_options(retries=settings.mirror.retries)
        state = mirror_task(settings.mirror, root, stages, return_state=True)
        # A failed mirror never loses the local result: report it and carry on.
        mirrored = state.result() if state.is_completed() else {"failed": str(state.message)}

    summary = build_summary(root, reports, tracking, mirrored)
    publish_to_wandb(settings, reports, summary)
    publish_report(summary)
    return summary
