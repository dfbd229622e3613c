"""Task: mirror finished stage folders to S3 (optional)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from lookalike.artifacts.mirror import mirror_aliases, mirror_stage
from lookalike.core.manifest import Manifest
from lookalike.core.settings import MirrorSettings


@task(
    name="mirror-to-s3",
    cache_policy=NO_CACHE,
    retries=MirrorSettings.model_fields["retries"].default,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
)
def mirror_to_s3(section: MirrorSettings, root: Path, manifests: list[Manifest]) -> list[dict]:
    logger = get_run_logger()
    results = []
    for manifest in manifests:
        result = mirror_stage(section, root, manifest)
        logger.info(
            "mirrored %s/%s to %s (%d uploaded, %d already there)",
            manifest.stage,
            manifest.key,
            result["url"],
            result["uploaded"],
            result["skipped"],
        )
        results.append(result)
    return results


@task(
    name="mirror-aliases-to-s3",
    cache_policy=NO_CACHE,
    retries=MirrorSettings.model_fields["retries"].default,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
)
def mirror_aliases_to_s3(section: MirrorSettings, root: Path, names: list[str]) -> list[str]:
    """After the stage folders: the moved aliases, so `s3://…/aliases/production` loads elsewhere."""
    urls = mirror_aliases(section, root, names)
    get_run_logger().info("mirrored aliases: %s", ", ".join(urls))
    return urls
