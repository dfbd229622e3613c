"""Prefect plumbing shared by the stage tasks: cache keys and stage reports.

Prefect's cache key for a stage task is the stage key (plus the artifacts root, or the
bucket of a shared `s3://` root, whose results are persisted in that bucket too), and
results are persisted, so a re-run shows the stage as Cached. The manifest on disk
stays the source of truth: when the stage folder is gone, `call_stage` runs the task
with `refresh_cache=True`, which recomputes and overwrites Prefect's record instead of
returning a result whose files no longer exist.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from lookalike.artifacts.shared_root import Store, read_manifest, store_at
from lookalike.artifacts.stage_runner import StageReport, StageResult
from lookalike.core.manifest import find_manifest
from lookalike.tasks.progress import progress_artifacts


@dataclass
class StageCache(CachePolicy):
    """Cache key = `<stage>-<stage key>-<root digest>`, from a lib key function."""

    stage: str = ""
    key_fn: Callable[..., str] | None = None

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return cache_key(self.stage, self.key_fn(**inputs), inputs["root"])


def cache_key(stage: str, key: str, root: Any) -> str:
    """A shared store's copy is keyed by the store's URL, so a retry on another machine (its copy
    elsewhere) finds the cached result."""
    root_digest = hashlib.sha256((store_at(root).url or str(root)).encode()).hexdigest()[:8]
    return f"{stage}-{key}-{root_digest}"


def result_storage(store: Store) -> str:
    """The saved block (`open_artifacts_root` saves it) that puts Prefect's results beside the
    stage folders, `<store>/prefect-results/`: Prefect needs result storage saved server-side."""
    return f"remote-file-system/{results_block_name(store)}"


def results_block_name(store: Store) -> str:
    return f"lookalike-results-{hashlib.sha256(store.url.encode()).hexdigest()[:8]}"


def save_result_storage(store: Store) -> str:
    """Save (or update) the RemoteFileSystem block for this store; s3fs reads the credentials
    from boto's usual chain, so the block holds no secret. Returns its slug."""
    from prefect.filesystems import RemoteFileSystem

    settings = {"client_kwargs": {"endpoint_url": store.endpoint_url}} if store.endpoint_url else {}
    RemoteFileSystem(basepath=f"{store.url}/prefect-results", settings=settings).save(
        results_block_name(store), overwrite=True
    )
    return result_storage(store)


def stage_options(stage: str, key_fn: Callable[..., str]) -> dict[str, Any]:
    """The @task options every stage task shares."""
    return {
        "name": stage,
        "cache_policy": StageCache(stage=stage, key_fn=key_fn),
        "persist_result": True,
        "result_serializer": "json",
        "task_run_name": f"{stage}",
        "retry_condition_fn": retry_unless_user_error,
    }


def call_stage(task: Task, **kwargs: Any) -> StageReport:
    """Run a stage task and report its status as users see it.

    `cached` when Prefect returned a cached result or the folder was already finished
    on disk; `resumed` when the stage reused part of an earlier attempt.
    """
    stage, root = task.name, kwargs["root"]
    with progress_artifacts():  # the key lists and hashes a collection (the dataset's): its bars reach the flow run
        key = task.cache_policy.key_fn(**kwargs)
    store = store_at(root)
    on_disk = find_manifest(root, stage, key) is not None or store.has_finished(stage, key)
    shared = store.config is not None  # Prefect's results then live beside the stage folders in the bucket
    options = {"refresh_cache": not on_disk, **({"result_storage": result_storage(store.config)} if shared else {})}
    started = time.perf_counter()
    state = task.with_options(**options)(**kwargs, return_state=True)
    result = state.result()  # re-raises the task's exception on failure
    result = result if isinstance(result, StageResult) else StageResult.model_validate(result)
    if shared:  # a result cached by another machine: its folder comes down from the store
        read_manifest(root, stage, result.manifest.key)
    seconds = time.perf_counter() - started
    status = "cached" if state.name == "Cached" else result.status
    return StageReport(manifest=result.manifest, status=status, seconds=round(seconds, 2))


def retry_unless_user_error(task, task_run, state) -> bool:
    """`retry_condition_fn`: retrying cannot fix bad data, settings or tampered files; it can
    fix S3 failing transiently under a shared root (an error marked `retryable`)."""
    from lookalike.core.errors import LookalikeError

    try:
        state.result()
    except LookalikeError as exc:
        return bool(getattr(exc, "retryable", False))
    except Exception:
        return True
    return True
