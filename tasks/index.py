"""Task: build the FAISS index (the `index` stage)."""

from pathlib import Path

from prefect import get_run_logger, task

from lookalike.artifacts.stage_runner import StageResult
from lookalike.core.manifest import Manifest
from lookalike.core.settings import IndexSettings
from lookalike.stages.index.stage import index_key, run_index_stage
from lookalike.tasks.stage import stage_options


@task(**stage_options("index", lambda section, embeddings, root: index_key(section, embeddings)))
def index_embeddings(section: IndexSettings, embeddings: Manifest, root: Path) -> StageResult:
    result = run_index_stage(section, embeddings, root)
    stats = result.manifest.stats
    get_run_logger().info(
        "index %s: %s, whitening %s, %d vectors, %d bytes, self-retrieval@1 %.4f",
        result.manifest.key,
        stats["factory"],
        (stats.get("whitening") or {}).get("why", "none"),
        stats["ntotal"],
        stats["bytes"],
        stats["self_retrieval_at_1"],
    )
    return result
