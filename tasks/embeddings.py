"""Task: batched embedding into resumable shards (the `embeddings` stage).

Retries (count from `embeddings.retries`, set by the flow) re-run the stage, which
embeds only the shards without a completion marker. Images an earlier embeddings stage
with the same encoder already embedded are taken from it by content hash (the log says
how many, and which earlier stage files failed verification and were not used).
"""

from pathlib import Path

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from lib.config import EmbeddingsSettings
from lib.embedding import embeddings_key, run_embeddings_stage
from lib.manifest import Manifest
from lib.stages import StageResult
from tasks.stage import stage_options


@task(
    **stage_options("embeddings", lambda section, dataset, encoder, root: embeddings_key(section, dataset, encoder)),
    retries=EmbeddingsSettings.model_fields["retries"].default,  # the flow sets the configured count
    retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
)
def embed_images(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest, root: Path) -> StageResult:
    result = run_embeddings_stage(section, dataset, encoder, root)
    stats = result.manifest.stats
    get_run_logger().info(
        "embeddings %s: %d vectors of dim %d, %d/%d shards reused, %d images embedded (%s images/s), "
        "%d reused by content hash from %s",
        result.manifest.key, stats["n_vectors"], stats["dim"], stats["shards_reused"], stats["n_shards"],
        stats["images_embedded"], stats["images_per_second"], stats.get("images_reused", 0),
        ", ".join(stats.get("reused_from", [])) or "no earlier stage",
    )
    for rejected in stats.get("reuse_rejected", []) if result.status != "cached" else []:
        get_run_logger().warning("embeddings %s: not reusing %s: %s", result.manifest.key, rejected["key"],
                                 rejected["reason"])
    return result
