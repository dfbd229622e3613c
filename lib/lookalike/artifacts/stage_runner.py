"""The one place that decides whether a stage computes, resumes or is already done.

Every `run_<stage>_stage` goes through `run_stage`: a finished folder (manifest present)
is returned as `cached`; otherwise the stage's `build` function fills the folder while an
exclusive lock on the key is held, so two runs with the same key never write the same
folder at once (the second waits, then finds the manifest and reuses it). While a build runs, its
stage, key, settings and inputs can be noted in a file (`note_builds_in`), so that a process watching
this one can say which stage a native crash ended (`lookalike.cli.crash`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import gc
import json
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lookalike.artifacts.shared_root import FolderStore, store_at
from lookalike.core.errors import LookalikeError, refuse_while_a_worker_imports_main
from lookalike.core.graph import STAGES, input_manifest_sha256
from lookalike.core.manifest import Manifest, Status, atomic_write_bytes, find_manifest, stage_dir, write_manifest


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and the children it has waited for (decode workers, ...)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> int:
    """This process's peak resident memory so far, in MB: a stage's manifest records it when the stage ends,
    so the first stage whose figure rises above the previous stages' is the one that set the peak."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20)


def release_freed_memory() -> None:
    """Hand what a finished stage freed back to the operating system. glibc keeps freed heap in its arenas for
    the next allocation; at 1,000,000 images the index stage left ~4 GB resident that the evaluation then added
    to (a run's peak: 7.1 GB; benchmarks/README.md, scale_e2e). `malloc_trim` returns it; a no-op off glibc.

    Objects kept alive only by reference cycles are collected first when the process holds more than
    COLLECT_ABOVE: with torch loaded a full collection costs ~0.2 s, about a tenth of a tiny run's stages."""
    resident = _resident_bytes()
    if resident is None or resident > COLLECT_ABOVE:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


COLLECT_ABOVE = 2 << 30  # bytes resident


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):  # no procfs (macOS)
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return None


def _cannot_write(exc: OSError, root: Path) -> bool:
    """Disk full, quota, read-only filesystem, or no permission under the root: the user's
    to fix, not a retry's. (Permission errors elsewhere, e.g. on source images, are not.)"""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    inside = exc.filename is not None and Path(exc.filename).resolve().is_relative_to(root.resolve())
    return exc.errno in (errno.EACCES, errno.EPERM) and inside


class ArtifactStorageError(LookalikeError, OSError):
    """The artifacts root cannot be written; says what to free or change."""


def storage_error(
    exc: OSError, root: Path | str, what: str, fix: str, path: Path | None = None
) -> ArtifactStorageError | None:
    """The one line for an OSError that is the artifacts root's to fix (full, over quota, read-only,
    not writable) while writing `what` (to `path`, when the error names no file) under `root`, or
    None for any other OSError."""
    if not _cannot_write(exc, Path(root)):
        return None
    where = exc.filename or path or "while writing"
    return ArtifactStorageError(f"cannot write {what} under {root}: {exc.strerror or exc} ({where}); {fix}")


class StageResult(BaseModel):
    """What a stage hands to the next one (small and JSON-serialisable)."""

    model_config = ConfigDict(frozen=True)
    manifest: Manifest
    status: Status


@dataclass(frozen=True)
class StageReport:
    """How a stage went in this run, as users see it."""

    manifest: Manifest
    status: Status
    seconds: float


@dataclass
class Built:
    """What a stage's build function reports back for its manifest."""

    files: list[str]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    resumed: bool = False


@contextmanager
def key_lock(root: Path | str, stage: str, key: str) -> Iterator[None]:
    """Exclusive advisory lock for one stage key (released when the process dies)."""
    lock_path = Path(root) / stage / f".{key}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_note: Path | None = None
_building: dict[tuple[str, str], dict[str, Any]] = {}  # the builds in progress, by (stage, key)
_note_lock = threading.Lock()  # Prefect may run two stages' tasks at once, in threads


def note_builds_in(path: Path | None) -> None:
    """From now on, keep `path` holding the stages this process is building (a JSON list of {stage, key,
    root, settings, inputs}; [] between builds). None stops it."""
    global _note
    with _note_lock:
        _note = path
        _building.clear()


@contextmanager
def _noted(root: Path, stage: str, key: str, settings: dict[str, Any], inputs: dict[str, str]) -> Iterator[None]:
    if _note is None:
        yield
        return
    entry = {"stage": stage, "key": key, "root": str(root), "settings": settings, "inputs": inputs}
    _write_note((stage, key), entry)
    try:
        yield
    finally:
        _write_note((stage, key), None)


def _write_note(at: tuple[str, str], entry: dict[str, Any] | None) -> None:
    with _note_lock:
        if _note is None:
            return
        if entry is None:
            _building.pop(at, None)
        else:
            _building[at] = entry
        atomic_write_bytes(_note, json.dumps(list(_building.values()), default=str).encode())


def run_stage(
    root: Path | str,
    stage: str,
    key: str,
    *,
    settings: dict[str, Any],
    inputs: dict[str, str],
    build: Callable[[Path], Built],
) -> StageResult:
    """Return the finished stage folder for `key`, building it first if needed.

    When `root` is a copy of a shared store (`lookalike.artifacts.shared_root`), a folder finished there is
    fetched instead of built, a build starts from the store's inputs and partial files, and
    the finished folder goes back up (manifest last).
    """
    refuse_while_a_worker_imports_main()
    store = store_at(root)
    found = find_manifest(root, stage, key)
    if found is not None:
        if not store.has_finished(stage, key):
            store.push_finished(found)  # finished here before the bucket had it (or it was emptied)
        return StageResult(manifest=found, status="cached")
    fetched = store.fetch_finished(stage, key)
    if fetched is not None:
        return StageResult(manifest=fetched, status="cached")
    try:
        return _build_locked(store, stage, key, settings, inputs, build)
    except OSError as exc:
        fix = "free disk space or point --artifacts-root at a writable folder, then re-run (nothing half-written is ever used)"
        error = storage_error(exc, root, f"the {stage} stage", fix)
        if error is not None:
            raise error from None
        raise


def _build_locked(
    store: FolderStore,
    stage: str,
    key: str,
    settings: dict[str, Any],
    inputs: dict[str, str],
    build: Callable[[Path], Built],
) -> StageResult:
    # the local lock for runs on this machine, then the store's lease for the other machines
    root = store.root
    with key_lock(root, stage, key), store.lease(stage, key) as finished_elsewhere:
        found = find_manifest(root, stage, key) or finished_elsewhere or store.fetch_finished(stage, key)
        if found is not None:  # another run finished it while we waited
            return StageResult(manifest=found, status="cached")
        folder = stage_dir(root, stage, key)
        folder.mkdir(parents=True, exist_ok=True)
        store.fetch_inputs(inputs)  # each a no-op for a plain folder
        # the hash chain: what the inputs' manifests were when this stage was built from them
        input_sha256 = input_manifest_sha256(root, inputs)
        store.pull_partial(stage, key)
        started, cpu = time.perf_counter(), cpu_seconds()
        with _noted(root, stage, key, settings, inputs):
            built = build(folder)
        timings = {
            "build_seconds": time.perf_counter() - started,
            "cpu_seconds": round(cpu_seconds() - cpu, 2),
            "peak_rss_mb": peak_rss_mb(),
            **built.timings,
        }
        release_freed_memory()  # the build's locals are gone: the next stage starts from what is still held
        manifest = write_manifest(
            folder,
            stage=stage,
            key=key,
            code_version=STAGES[stage].code_version,
            settings=settings,
            inputs=inputs,
            files=built.files,
            stats=built.stats,
            timings=timings,
            input_sha256=input_sha256,
        )
        store.push_finished(manifest)  # under the lease: a machine waiting for it finds the manifest
    return StageResult(manifest=manifest, status="resumed" if built.resumed else "computed")
