"""Task: open the artifacts root, which is either a folder or this machine's copy of a shared
S3 store (`artifacts_root=s3://bucket/prefix`, see lookalike.artifacts.shared_root)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lookalike.artifacts.shared_root import open_store, store_for
from lookalike.core.extras import import_extra
from lookalike.core.settings import Settings
from lookalike.tasks.stage import save_result_storage


@task(name="artifacts-root", cache_policy=NO_CACHE, persist_result=False)
def open_artifacts_root(settings: Settings) -> Path:
    """The local root every stage task works in; for a shared store, opened (and its aliases
    pulled) so every stage syncs through it."""
    store = store_for(settings)
    if store is None:
        return settings.artifacts_root
    import_extra("s3fs", f"artifacts_root={store.url}")  # Prefect's results beside the stage folders
    root = open_store(store)
    block = save_result_storage(store)
    get_run_logger().info(
        "artifacts shared through %s (Prefect results: block %s); this machine's copy: %s", store.url, block, root
    )
    return root
