"""Tasks: choose where the evaluation's queries come from, then measure retrieval quality
and draw the retrieval grid (the `evaluation` stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lookalike.artifacts.stage_runner import StageResult
from lookalike.core.manifest import Manifest
from lookalike.core.settings import DatasetSettings, EvaluationSettings
from lookalike.stages.evaluation.stage import evaluation_key, query_dataset_section, run_evaluation_stage
from lookalike.tasks.stage import retry_unless_user_error, stage_options


@task(
    name="query-split",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_user_error,
)
def resolve_query_split(
    dataset: DatasetSettings, evaluation: EvaluationSettings, root: Path
) -> Optional[DatasetSettings]:
    """The dataset section of the held-out query split, or None for leave-one-out."""
    section = query_dataset_section(dataset, evaluation, root)
    if section is None:
        get_run_logger().info(
            "evaluation queries: leave-one-out over the indexed images (query_split=%s)", evaluation.query_split
        )
    else:
        get_run_logger().info(
            "evaluation queries: held-out split %r (at most %s images)", section.split, section.limit or "all"
        )
    return section


def _key(section, dataset, embeddings, index, root, queries=None) -> str:
    return evaluation_key(section, dataset, index, queries)


@task(**stage_options("evaluation", _key))
def evaluate_index(
    section: EvaluationSettings,
    dataset: Manifest,
    embeddings: Manifest,
    index: Manifest,
    root: Path,
    queries: Optional[Manifest] = None,
) -> StageResult:
    result = run_evaluation_stage(section, dataset, embeddings, index, root, queries)
    stats = result.manifest.stats
    get_run_logger().info(
        "evaluation %s (%s, %d queries): kNN@%d accuracy %s",
        result.manifest.key,
        stats["protocol"],
        stats["n_queries"],
        stats["k"],
        stats["knn_accuracy"],
    )
    if sampled := stats.get("sampled"):
        get_run_logger().info(
            "evaluation on a sample of %d of %d images (evaluation.sample_size); duplicates over all of them",
            sampled["n"],
            sampled["of"],
        )
    if leaks := stats.get("leaks"):
        get_run_logger().info(
            "evaluation leaks: %d of %d queries have a copy in the index (%d exact, %d near); clean kNN@%d accuracy %s",
            leaks["n_leaked"],
            stats["n_queries"],
            leaks["exact"],
            leaks["near"],
            stats["k"],
            stats["clean"]["knn_accuracy"],
        )
    return result
