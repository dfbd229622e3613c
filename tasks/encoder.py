"""Tasks: self-supervised pretraining (the `encoder` stage), or reuse of an aliased encoder.

No task retries here: a retry would repeat finished passes. An interrupted pretraining
resumes from its last pass checkpoint on the next attempt instead.
"""

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lookalike.artifacts.aliases import alias_manifest
from lookalike.artifacts.stage_runner import StageReport, StageResult
from lookalike.core.manifest import Manifest, verified_path
from lookalike.core.settings import EncoderSettings
from lookalike.stages.encoder.checkpoint import ENCODER_FILE
from lookalike.stages.encoder.stage import encoder_key, run_encoder_stage
from lookalike.tasks.progress import progress_artifacts
from lookalike.tasks.stage import stage_options
from lookalike.tasks.tracking import active_run

LOG_EVERY_S = 10.0


@task(**stage_options("encoder", lambda section, dataset, root: encoder_key(section, dataset, root)))
def pretrain_encoder(section: EncoderSettings, dataset: Manifest, root: Path) -> StageResult:
    logger = get_run_logger()
    tracking = active_run()

    logged = [0.0]

    def on_epoch(epoch: int, epochs: int, loss: float, seconds: float) -> None:
        # a small collection makes a pass every second or two: log about every 10 s, and the last pass
        if epoch == epochs or time.monotonic() - logged[0] >= LOG_EVERY_S:
            logged[0] = time.monotonic()
            logger.info("%s pass %d/%d: loss %.4f (%.1f s)", section.method, epoch, epochs, loss, seconds)
        if tracking:
            tracking.log({"pretrain/loss": loss, "pretrain/epoch": epoch, "pretrain/epoch_seconds": seconds})

    with progress_artifacts():
        result = run_encoder_stage(section, dataset, root, on_epoch=on_epoch)
    if result.status == "resumed":
        logger.info("resumed pretraining from pass %d", result.manifest.stats["resumed_from_epoch"])
    return result


@task(name="encoder", cache_policy=NO_CACHE)
def use_aliased_encoder(root: Path, alias: str) -> StageReport:
    """The encoder an alias points at, its weights verified against the manifest (no training)."""
    started = time.perf_counter()
    manifest = alias_manifest(root, alias, "encoder")
    verified_path(root, manifest, ENCODER_FILE)
    get_run_logger().info("reusing the %r encoder %s (%s)", alias, manifest.key, manifest.settings.get("method"))
    return StageReport(manifest=manifest, status="cached", seconds=round(time.perf_counter() - started, 2))
