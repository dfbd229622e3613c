"""Tasks: the W&B runs of a flow run, and the lineage of its stages.

One W&B run per flow run (job type `upload-embeddings`, as in the article), opened first so
pretraining can stream its losses, and finished by the flow's state hooks whether the run
completes or fails. Besides it, each stage this flow run computed gets a short run of its own
(job types `dataset`, `pretrain`, `embed`, `build-index`, grouped under the flow run's name)
that declares its inputs' artifacts and logs its output, so W&B's lineage graph reads
dataset → model → embeddings → faiss-embeddings. A cached stage was logged by the run that made
it. W&B failures are reported and never fail the flow: the local result does not depend on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from lookalike.artifacts.stage_runner import StageReport
from lookalike.core.manifest import Manifest
from lookalike.core.settings import Settings
from lookalike.reporting.lineage import JOB_TYPES, LINEAGE_STAGES, lineage_inputs, stage_artifact
from lookalike.reporting.summary import baseline_rows
from lookalike.reporting.tracking import FLOW_JOB_TYPE, TrackingRun, wandb_dir
from lookalike.stages.duplicates import duplicates_table
from lookalike.stages.encoder.checkpoint import ENCODER_FILE
from lookalike.stages.evaluation.collection_map import map_table
from lookalike.stages.evaluation.stage import retrieval_table

_ACTIVE: dict[str, TrackingRun] = {}


def active_run() -> TrackingRun | None:
    return _ACTIVE.get(str(flow_run.id))


@task(name="open-wandb-run", cache_policy=NO_CACHE)
def open_tracking_run(settings: Settings) -> dict[str, Any]:
    run = TrackingRun(
        settings.tracking,
        wandb_dir(settings.artifacts_root),
        name=flow_run.name,
        job_type=FLOW_JOB_TYPE,
        group=flow_run.name,
        config={**settings.model_dump(mode="json"), "prefect_flow_run_id": str(flow_run.id)},
    )
    _ACTIVE[str(flow_run.id)] = run
    get_run_logger().info("W&B run (%s mode): %s", run.mode, run.url or run.run_dir)
    if run.url:  # online: the flow run's page links to its W&B run (offline runs have no page yet)
        create_link_artifact(
            run.url, link_text=f"W&B run {flow_run.name}", key="wandb-run", description="losses, metrics, lineage"
        )
    return {"mode": run.mode, "run_dir": run.run_dir, "url": run.url}


def start_tracking(settings: Settings) -> dict[str, Any]:
    """The flow's W&B run, or {"mode": "failed", "error": ...}: the flow goes on without it."""
    state = open_tracking_run(settings, return_state=True)
    if state.is_completed():
        return state.result()
    return {"mode": "failed", "error": str(state.message), "run_dir": None, "url": None}


@task(name="wandb-stage-run", cache_policy=NO_CACHE)
def log_stage_run(settings: Settings, stage: str, manifests: dict[str, Manifest]) -> str | None:
    """A W&B run for one stage this flow run computed: uses its inputs' artifacts, logs its own
    (aliases `latest` and the stage key). Returns the run folder (offline) or URL (online)."""
    root = settings.artifacts_root
    manifest = manifests[stage]
    run = TrackingRun(
        settings.tracking,
        wandb_dir(root),
        name=f"{flow_run.name}-{JOB_TYPES[stage]}",
        job_type=JOB_TYPES[stage],
        group=flow_run.name,
        config={
            "stage": stage,
            "key": manifest.key,
            "settings": manifest.settings,
            "inputs": manifest.inputs,
            "prefect_flow_run_id": str(flow_run.id),
        },
    )
    exit_code = 1
    try:
        for upstream in lineage_inputs(stage):
            run.use_artifact(stage_artifact(root, upstream, manifests))
        if stage == "encoder":
            for epoch, loss in enumerate(manifest.stats.get("losses", []), start=1):
                run.log({"pretrain/loss": loss, "pretrain/epoch": epoch})
        run.set_summary({k: v for k, v in manifest.stats.items() if isinstance(v, (int, float))})
        run.log_artifact(stage_artifact(root, stage, manifests), aliases=["latest", manifest.key])
        exit_code = 0
    finally:
        where = run.url or run.run_dir
        run.finish(exit_code)
    get_run_logger().info("W&B %s run logged %s/%s: %s", JOB_TYPES[stage], stage, manifest.key, where)
    return where


def track_stage(
    settings: Settings, tracking: dict[str, Any], reports: dict[str, StageReport], stage: str
) -> str | None:
    """Call right after a stage: when this flow run computed it (not cached), its W&B run logs it.
    Returns where (the run folder offline, its URL online), or None when nothing was logged."""
    if (
        stage not in LINEAGE_STAGES
        or reports[stage].status == "cached"
        or tracking.get("mode") in ("disabled", "failed")
    ):
        return None
    state = log_stage_run(settings, stage, {s: r.manifest for s, r in reports.items()}, return_state=True)
    if state.is_completed():
        return state.result()
    get_run_logger().warning("W&B lineage for %s not logged (the local result is unaffected): %s", stage, state.message)
    return None


@task(name="publish-to-wandb", cache_policy=NO_CACHE)
def publish_to_wandb(settings: Settings, reports: dict[str, StageReport], summary: dict[str, Any]) -> None:
    """Log metrics, pictures (the grid, the loss curve, the collection's map), the `map_points` table
    (one row per mapped image, for W&B's embedding projector), the `retrieval` table (the grid's queries and neighbours, with
    thumbnails) and the `duplicates` table (every image of each duplicate group), and declare the index (`<method>-embeddings`, type `faiss-embeddings`) as the
    input this run evaluated, with `production` when the gate passed."""
    run = active_run()
    if run is None:
        return
    root = settings.artifacts_root
    encoder, index = reports["encoder"], reports["index"]
    if encoder.status == "cached":  # live per-epoch logging happened in an earlier run
        for epoch, loss in enumerate(encoder.manifest.stats["losses"], start=1):
            run.log({"pretrain/loss": loss, "pretrain/epoch": epoch})
    run.set_summary(summary["metrics"])
    if table := baseline_rows(summary):  # the run beside raw pixels and its untrained encoder, same queries
        header, rows = table
        run.set_summary({f"{column}/{row[0]}": value for row in rows for column, value in zip(header[1:], row[1:])})
        run.log_table("evaluation/baselines", header, rows)
    if distilled := summary.get("distillation"):  # the student against its teacher, same queries
        run.set_summary(
            {f"distillation/fraction/{k}": v for k, v in distilled["fraction"].items()}
            | {"distillation/speedup": distilled["speedup"]}
        )
    if summary["skipped"]:  # every unreadable image, with why (capped as in the manifest)
        run.log_table(
            "dataset/skipped",
            ["row_id", "path", "reason"],
            [[s["row_id"], s["path"], s["reason"]] for s in summary["skipped"]],
        )
    run.log_images(
        {
            k: Path(v)
            for k, v in (
                ("retrieval_grid", summary["artifacts"]["retrieval_grid"]),
                ("pretrain/loss_curve", summary["artifacts"]["loss_curve"]),
                ("map", summary["artifacts"].get("map")),
            )
            if v
        }
    )
    table = retrieval_table(root, reports["evaluation"].manifest) if run.mode != "disabled" else None
    if table is not None:  # the grid's queries and neighbours, with thumbnails
        run.log_table("retrieval", *table)
    if run.mode != "disabled" and (points := map_table(root, reports["evaluation"].manifest)):
        run.log_table("map_points", *points)  # one row per mapped image: W&B's projector plots it
    if summary.get("leaks"):  # how many queries leaked and the scores without them
        run.set_summary({f"leaks/{k}": v for k, v in summary["leaks"].items() if k != "why"})
        run.set_summary({f"clean/{k}": v for k, v in summary["clean"].items() if k != "gain"})
    if run.mode != "disabled" and (groups := duplicates_table(root, reports["evaluation"].manifest)):
        run.log_table("duplicates", *groups)  # one row per image of each group, with thumbnails
        run.set_summary({f"duplicates/{k}": v for k, v in (summary.get("duplicates") or {}).items()})
        if summary["artifacts"].get("duplicates_picture"):
            run.log_images({"duplicates": Path(summary["artifacts"]["duplicates_picture"])})
    metadata = {
        "dim": index.manifest.stats["dim"],
        "ntotal": index.manifest.stats["ntotal"],
        "metric": index.manifest.stats["metric"],
        "index_type": index.manifest.stats["type"],
        "factory": index.manifest.stats["factory"],
        "index_choice": summary.get("index"),  # for index.type=auto: the preset chosen and why
        "encoder_recipe": summary.get("encoder"),  # steps trained and the settings chosen from the data, with why
        "stage_keys": {name: r.manifest.key for name, r in reports.items()},
        "metrics": summary["metrics"],
        "baselines": summary.get("baselines"),
        "gain": summary.get("gain"),
        "distillation": summary.get("distillation"),
        "encoder_sha256": encoder.manifest.file(ENCODER_FILE).sha256,
    }
    manifests = {name: r.manifest for name, r in reports.items()}
    promoted = ["production"] if "production" in summary["aliases"] else []  # the gate passed
    run.use_artifact(
        stage_artifact(root, "index", manifests, extra=metadata), aliases=["latest", index.manifest.key, *promoted]
    )
    if promoted:
        run.use_artifact(stage_artifact(root, "encoder", manifests), aliases=promoted)


def finish_tracking_run(flow, run, state) -> None:
    """Flow state hook: close the W&B run with the flow's outcome."""
    tracking = _ACTIVE.pop(str(run.id), None)
    if tracking is not None:
        tracking.finish(exit_code=0 if state.is_completed() else 1)
