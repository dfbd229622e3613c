"""Prefect plumbing shared by the stage tasks: cache keys and stage reports.

Prefect's cache key for a stage task is the stage key (plus the artifacts root), and
results are persisted, so a re-run shows the stage as Cached. The manifest on disk
stays the source of truth: when the stage folder is gone, `call_stage` runs the task
with `refresh_cache=True`, which recomputes and overwrites Prefect's record instead of
returning a result whose files no longer exist.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from lib.manifest import find_manifest
from lib.stages import StageReport, StageResult


@dataclass
class StageCache(CachePolicy):
    """Cache key = `<stage>-<stage key>-<root digest>`, from a lib key function."""

    stage: str = ""
    key_fn: Callable[..., str] | None = None

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return cache_key(self.stage, self.key_fn(**inputs), inputs["root"])


def cache_key(stage: str, key: str, root: Any) -> str:
    root_digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"{stage}-{key}-{root_digest}"


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
    stage = task.name
    key = task.cache_policy.key_fn(**kwargs)
    on_disk = find_manifest(kwargs["root"], stage, key) is not None
    started = time.perf_counter()
    state = task.with_options(refresh_cache=not on_disk)(**kwargs, return_state=True)
    result = state.result()  # re-raises the task's exception on failure
    seconds = time.perf_counter() - started
    result = result if isinstance(result, StageResult) else StageResult.model_validate(result)
    status = "cached" if state.name == "Cached" else result.status
    return StageReport(manifest=result.manifest, status=status, seconds=round(seconds, 2))


def retry_unless_user_error(task, task_run, state) -> bool:
    """`retry_condition_fn`: retrying cannot fix bad data, settings or tampered files."""
    from lib.errors import LookalikeError

    try:
        state.result()
    except LookalikeError:
        return False
    except Exception:
        return True
    return True
