"""Fault injection for subprocess tests; never on a production import path.

Tests put this folder on PYTHONPATH and describe the faults in the `FAULT_INJECTION`
environment variable (JSON). Python imports `sitecustomize` at start-up; this one
patches a lib module right after it is first imported, so a real `lookalike run` (or
`prefect flow-run retry`) process misbehaves exactly where a test needs it to:

    embed_slow_seconds    sleep this long in every embedding batch
    embed_fail_at_batch   raise at this embedding batch (1-based) ...
    embed_fail_attempts   ... in this many attempts (task retries), then behave
    train_slow_seconds    sleep this long in every training step
    forbid_training       raise if any training step runs
    kill_once_at_embed_batch  SIGKILL this process at this embedding batch (1-based) unless the
                          file `kill_marker` exists; creates it first (one kill across all processes)
    kill_in_index_write   write half of index.faiss's temp file, then SIGKILL this process
    abort_in_evaluation   abort this process where the evaluation stage draws its map, as the C++ runtime
                          does when FAISS throws inside an OpenMP region (issue 44)
    kill_after_uploads    SIGKILL this process after this many S3 uploads
    disk_full_at_shard    writing this embedding shard (0-based) fails with ENOSPC
    read_only_root        creating any stage's lock file fails with EROFS
    missing_modules       these top-level modules cannot be imported, as if their extra were not
                          installed (e.g. ["gradio"])

Without the variable this module does nothing.
"""

from __future__ import annotations

import errno
import importlib.abc
import json
import os
import signal
import sys
import time
import types

FAULTS = json.loads(os.environ.get("FAULT_INJECTION") or "{}")
_counts = {"embed_attempts": 0, "embed_batches": 0, "uploads": 0}


class InjectedFault(RuntimeError):
    """Raised where a test asked for a failure (never a LookalikeError: it is retryable)."""


def _kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_inference(module) -> None:
    original_embed = module.embed_batch

    def embed_batch(*args, **kwargs):
        _counts["embed_batches"] += 1
        time.sleep(FAULTS.get("embed_slow_seconds", 0))
        if _counts["embed_batches"] == FAULTS.get("kill_once_at_embed_batch"):
            try:
                open(FAULTS["kill_marker"], "x").close()
            except FileExistsError:
                pass
            else:
                _kill_self()
        if _counts["embed_batches"] == FAULTS.get("embed_fail_at_batch") and _counts["embed_attempts"] <= FAULTS.get(
            "embed_fail_attempts", 1
        ):
            raise InjectedFault(f"injected embedding failure at batch {_counts['embed_batches']}")
        return original_embed(*args, **kwargs)

    module.embed_batch = embed_batch


def _patch_embedding(module) -> None:
    original_run = module._embed

    def _embed(*args, **kwargs):
        _counts["embed_attempts"] += 1
        _counts["embed_batches"] = 0
        return original_run(*args, **kwargs)

    module._embed = _embed
    original_write = module._write_shard

    def _write_shard(folder, i, *args, **kwargs):
        if i == FAULTS.get("disk_full_at_shard"):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / module.shard_name(i)))
        return original_write(folder, i, *args, **kwargs)

    module._write_shard = _write_shard


def _patch_stages(module) -> None:
    original = module.key_lock

    def key_lock(root, stage, key):
        if FAULTS.get("read_only_root"):
            raise OSError(errno.EROFS, "Read-only file system", str(root))
        return original(root, stage, key)

    module.key_lock = key_lock


def _patch_pretraining(module) -> None:
    original = module.build_method

    def build_method(*args, **kwargs):
        method = original(*args, **kwargs)
        step = method.training_loss

        def training_loss(self, *a, **k):
            if FAULTS.get("forbid_training"):
                raise InjectedFault("a training step ran in a run that must not train")
            time.sleep(FAULTS.get("train_slow_seconds", 0))
            return step(*a, **k)

        # bound, as the method's own: the loop routes it through Fabric's forward (mark_forward_method)
        method.training_loss = types.MethodType(training_loss, method)
        return method

    module.build_method = build_method


def _patch_indexing(module) -> None:
    faiss = module.faiss
    original = faiss.write_index

    def write_index(index, path):
        if FAULTS.get("kill_in_index_write"):
            data = faiss.serialize_index(index).tobytes()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
            _kill_self()
        return original(index, path)

    module.faiss = type(
        "FaultyFaiss",
        (),
        {"__getattr__": lambda self, name: getattr(faiss, name), "write_index": staticmethod(write_index)},
    )()


def _patch_evaluation(module) -> None:
    original = module.write_map

    def write_map(*args, **kwargs):
        if FAULTS.get("abort_in_evaluation"):
            os.abort()
        return original(*args, **kwargs)

    module.write_map = write_map


def _patch_storage(module) -> None:
    original = module.s3_client

    def s3_client(*args, **kwargs):
        client = original(*args, **kwargs)
        upload = client.upload_file

        def upload_file(*a, **k):
            result = upload(*a, **k)
            _counts["uploads"] += 1
            if _counts["uploads"] == FAULTS.get("kill_after_uploads"):
                _kill_self()
            return result

        client.upload_file = upload_file
        return client

    module.s3_client = s3_client


PATCHES = {
    "lookalike.stages.embeddings.stage": _patch_embedding,
    "lookalike.stages.inference": _patch_inference,
    "lookalike.artifacts.stage_runner": _patch_stages,
    "lookalike.stages.encoder.training": _patch_pretraining,
    "lookalike.stages.index.stage": _patch_indexing,
    "lookalike.stages.evaluation.stage": _patch_evaluation,
    "lookalike.artifacts.s3": _patch_storage,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds the real module, then runs its patch once the module has executed."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_and_patch
        return spec


if FAULTS:
    sys.meta_path.insert(0, _PatchAfterImport())
for _name in FAULTS.get("missing_modules", ()):
    sys.modules[_name] = None  # `import _name` raises ModuleNotFoundError, as when it is not installed
