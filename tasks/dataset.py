"""Task: snapshot the dataset (the `dataset` stage)."""

from pathlib import Path

from prefect import get_run_logger, task

from lookalike.artifacts.stage_runner import StageResult
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset.stage import dataset_key, run_dataset_stage
from lookalike.tasks.progress import progress_artifacts
from lookalike.tasks.stage import stage_options


@task(**stage_options("dataset", lambda section, root: dataset_key(section, root)[0]), retries=1, retry_delay_seconds=5)
def snapshot_dataset(section: DatasetSettings, root: Path) -> StageResult:
    with progress_artifacts():  # listing, hashing and checking images, on the task run's page
        result = run_dataset_stage(section, root)
    stats = result.manifest.stats
    get_run_logger().info(
        "dataset %s: %d images, %d skipped (%s)",
        result.manifest.key,
        stats["n_images"],
        stats["n_skipped"],
        result.status,
    )
    return result
