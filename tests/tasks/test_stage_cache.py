"""tasks/stage.py without a Prefect server: every stage task's cache key is its stage key (so Prefect's
cache and the stage folders agree), a shared store's copies share one key, and which failures a stage
task retries. Running the tasks in a flow: tests/e2e/test_flow.py."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict

from helpers import TINY

from lookalike.artifacts.shared_root import STORE_FILE, Store
from lookalike.core.manifest import find_manifest
from lookalike.core.settings import load_settings
from lookalike.tasks.dataset import snapshot_dataset
from lookalike.tasks.embeddings import embed_images
from lookalike.tasks.encoder import pretrain_encoder
from lookalike.tasks.evaluation import evaluate_index
from lookalike.tasks.index import index_embeddings
from lookalike.tasks.stage import StageCache, cache_key, result_storage, retry_unless_user_error

STAGE_TASKS = {
    "dataset": snapshot_dataset,
    "encoder": pretrain_encoder,
    "embeddings": embed_images,
    "index": index_embeddings,
    "evaluation": evaluate_index,
}


def test_each_stage_tasks_cache_key_is_the_key_of_the_folder_it_builds(tiny_chain):
    """The policy is called with the task's own parameters: one added to a task but not to its key
    function (or the reverse) fails here, not in the middle of a flow run."""
    from lookalike.stages.evaluation.stage import evaluation_key

    settings = load_settings({**TINY, "artifacts_root": str(tiny_chain)})
    manifests = {
        stage: find_manifest(tiny_chain, stage, folder.parent.name)
        for stage in ("dataset", "encoder", "embeddings", "index")
        for folder in (tiny_chain / stage).glob("*/manifest.json")
    }
    for stage, task in STAGE_TASKS.items():
        parameters = inspect.signature(task.fn).parameters
        inputs = {
            name: getattr(settings, stage) if name == "section" else tiny_chain if name == "root" else manifests[name]
            for name in parameters
            if parameters[name].default is inspect.Parameter.empty
        }
        policy = task.cache_policy
        assert isinstance(policy, StageCache) and (task.name, policy.stage) == (stage, stage)
        built = (
            manifests[stage].key
            if stage in manifests
            else evaluation_key(settings.evaluation, manifests["dataset"], manifests["index"])
        )
        assert policy.compute_key(None, inputs, {}) == cache_key(stage, built, tiny_chain), stage
        assert task.persist_result and task.retry_condition_fn is retry_unless_user_error


def test_copies_of_one_shared_store_share_a_cache_key_and_folders_do_not(tmp_path):
    """A retry on another machine works in its own copy of the store: it must find the cached result."""
    assert cache_key("index", "abc", tmp_path / "a") == cache_key("index", "abc", str(tmp_path / "a"))
    assert cache_key("index", "abc", tmp_path / "a") != cache_key("index", "abc", tmp_path / "b")
    assert cache_key("index", "abc", tmp_path / "a").startswith("index-abc-")
    store = Store(url="s3://bucket/team")
    for machine in ("a", "b"):
        (tmp_path / machine).mkdir()
        (tmp_path / machine / STORE_FILE).write_text(json.dumps(asdict(Store(url=store.url, cache=machine))))
    assert cache_key("index", "abc", tmp_path / "a") == cache_key("index", "abc", tmp_path / "b")
    elsewhere = tmp_path / "c"
    elsewhere.mkdir()
    (elsewhere / STORE_FILE).write_text(json.dumps(asdict(Store(url="s3://bucket/other"))))
    assert cache_key("index", "abc", elsewhere) != cache_key("index", "abc", tmp_path / "a")
    assert result_storage(store) != result_storage(Store(url="s3://bucket/other"))
    assert result_storage(store).startswith("remote-file-system/lookalike-results-")


def test_a_stage_task_retries_transient_s3_failures_but_not_user_errors():
    from prefect.states import Failed

    from lookalike.artifacts.s3 import MirrorError
    from lookalike.core.errors import LookalikeError

    transient = MirrorError("cannot upload …: InternalError")
    transient.retryable = True
    assert retry_unless_user_error(None, None, Failed(data=transient))
    assert not retry_unless_user_error(None, None, Failed(data=MirrorError("bucket 'x' does not exist")))
    assert not retry_unless_user_error(None, None, Failed(data=LookalikeError("bad setting")))
    assert retry_unless_user_error(None, None, Failed(data=OSError("connection reset")))
