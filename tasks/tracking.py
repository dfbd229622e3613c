"""Tasks: the W&B run of a flow run, and publishing the index artifact to it.

One W&B run per flow run (job type `upload-embeddings`, as in the article), opened
first so pretraining can stream its losses, and finished by the flow's state hooks
whether the run completes or fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lib.config import Settings
from lib.encoder import ENCODER_FILE
from lib.evaluation import retrieval_table
from lib.indexing import INDEX_FILE
from lib.manifest import MANIFEST, stage_dir
from lib.stages import StageReport
from lib.tracking import INDEX_ARTIFACT_TYPE, INDEX_JOB_TYPE, TrackingRun, wandb_dir

_ACTIVE: dict[str, TrackingRun] = {}


def active_run() -> TrackingRun | None:
    return _ACTIVE.get(str(flow_run.id))


@task(name="open-wandb-run", cache_policy=NO_CACHE)
def open_tracking_run(settings: Settings) -> dict[str, Any]:
    run = TrackingRun(
        settings.tracking, wandb_dir(settings.artifacts_root), name=flow_run.name, job_type=INDEX_JOB_TYPE,
        group=None, config={**settings.model_dump(mode="json"), "prefect_flow_run_id": str(flow_run.id)},
    )
    _ACTIVE[str(flow_run.id)] = run
    get_run_logger().info("W&B run (%s mode): %s", run.mode, run.url or run.run_dir)
    return {"mode": run.mode, "run_dir": run.run_dir, "url": run.url}


@task(name="publish-to-wandb", cache_policy=NO_CACHE)
def publish_to_wandb(settings: Settings, reports: dict[str, StageReport], summary: dict[str, Any]) -> None:
    """Log metrics, pictures, the `retrieval` table (the grid's queries and neighbours, with
    thumbnails) and the index artifact (`<method>-embeddings`, type `faiss-embeddings`)."""
    run = active_run()
    if run is None:
        return
    root = settings.artifacts_root
    encoder, index = reports["encoder"], reports["index"]
    if encoder.status == "cached":  # live per-epoch logging happened in an earlier run
        for epoch, loss in enumerate(encoder.manifest.stats["losses"], start=1):
            run.log({"pretrain/loss": loss, "pretrain/epoch": epoch})
    run.set_summary(summary["metrics"])
    if summary["skipped"]:  # every unreadable image, with why (capped as in the manifest)
        run.log_table("dataset/skipped", ["row_id", "path", "reason"],
                      [[s["row_id"], s["path"], s["reason"]] for s in summary["skipped"]])
    run.log_images({k: Path(v) for k, v in (("retrieval_grid", summary["artifacts"]["retrieval_grid"]),
                                              ("pretrain/loss_curve", summary["artifacts"]["loss_curve"])) if v})
    table = retrieval_table(root, reports["evaluation"].manifest) if run.mode != "disabled" else None
    if table is not None:  # the grid's queries and neighbours, with thumbnails
        run.log_table("retrieval", *table)
    metadata = {
        "dim": index.manifest.stats["dim"],
        "ntotal": index.manifest.stats["ntotal"],
        "metric": index.manifest.stats["metric"],
        "index_type": index.manifest.stats["type"],
        "factory": index.manifest.stats["factory"],
        "index_choice": summary.get("index"),  # for index.type=auto: the preset chosen and why
        "stage_keys": {name: r.manifest.key for name, r in reports.items()},
        "metrics": summary["metrics"],
        "sha256": {f.path: f.sha256 for f in index.manifest.files},
        "encoder_sha256": encoder.manifest.file(ENCODER_FILE).sha256,
    }
    promoted = ["production"] if "production" in summary["aliases"] else []  # the gate passed
    run.log_folder_artifact(
        name=f"{encoder.manifest.settings['method']}-embeddings", type=INDEX_ARTIFACT_TYPE,
        folder=stage_dir(root, "index", index.manifest.key), files=[INDEX_FILE, MANIFEST],
        metadata=metadata, aliases=["latest", index.manifest.key, *promoted],
    )


def finish_tracking_run(flow, run, state) -> None:
    """Flow state hook: close the W&B run with the flow's outcome."""
    tracking = _ACTIVE.pop(str(run.id), None)
    if tracking is not None:
        tracking.finish(exit_code=0 if state.is_completed() else 1)
