"""Task: measure retrieval quality and draw the retrieval grid (the `evaluation` stage)."""

from pathlib import Path

from prefect import get_run_logger, task

from lib.config import EvaluationSettings
from lib.evaluation import evaluation_key, run_evaluation_stage
from lib.manifest import Manifest
from lib.stages import StageResult
from tasks.stage import stage_options


@task(**stage_options("evaluation", lambda section, dataset, embeddings, index, root: evaluation_key(section, dataset, index)))
def evaluate_index(section: EvaluationSettings, dataset: Manifest, embeddings: Manifest, index: Manifest, root: Path) -> StageResult:
    result = run_evaluation_stage(section, dataset, embeddings, index, root)
    stats = result.manifest.stats
    get_run_logger().info("evaluation %s: kNN@%d accuracy %s", result.manifest.key, stats["k"], stats["knn_accuracy"])
    return result
