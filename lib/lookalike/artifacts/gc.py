"""`lookalike gc`: the shared dataset parts that no kept version uses, found and (on request) removed.

Image bytes live once in `<root>/dataset/parts/`, shared between dataset versions
(`lookalike.stages.dataset.parts`), so deleting a version folder frees nothing by itself; gc
releases the parts no remaining version lists. What is kept:

- every dataset version folder present in the root, finished or not, keeps the parts its
  `parts.json` lists;
- with `versions=True`, a finished dataset version that no alias (now or in its history) and no
  finished stage folder of the root references is removed too, with the parts only it used;
- anything written or reused within `min_age` seconds, and everything while a stage build holds
  its key's lock on this machine: a dataset build lists its parts only when it finishes.

A dry run (the default) removes nothing. For an `s3://` root this is this machine's copy; the
bucket is not touched.
"""

from __future__ import annotations

import errno
import fcntl
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lookalike.artifacts.aliases import alias_history, list_aliases
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import STAGES, stage_of
from lookalike.core.manifest import (
    MANIFEST,
    IntegrityError,
    find_manifest,
    is_stage_key,
    part_entries,
    parts_dir,
)

DATASET = "dataset"
MIN_AGE_HOURS = 24.0  # longer than a dataset build of a large collection: its parts are listed when it ends


class GcError(LookalikeError, RuntimeError):
    """Garbage collection cannot tell safely what is unused; says what to fix."""


@dataclass(frozen=True)
class Removable:
    path: str  # relative to the root
    bytes: int
    why: str


@dataclass
class Collection:
    """What gc found: what it removes (or, in a dry run, would), and what it keeps."""

    root: str
    deleted: bool
    parts: list[Removable] = field(default_factory=list)
    versions: list[Removable] = field(default_factory=list)
    kept_parts: int = 0
    kept_versions: int = 0
    busy: list[str] = field(default_factory=list)  # stage builds in progress: nothing was removed

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in [*self.parts, *self.versions])

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}


def referenced_versions(root: Path | str) -> dict[str, str]:
    """Dataset key -> what references it: an alias (now or in its history), or a finished stage folder.

    Raises:
        GcError: a stage folder's manifest cannot be read, so what it references is unknown.
    """
    found: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreadable alias file: `lookalike ls` reports it
        named = [*list_aliases(root).values(), *alias_history(root)]
    for alias in named:
        if DATASET in alias.stages:
            found.setdefault(alias.stages[DATASET], f"alias {alias.name}")
    for stage in STAGES:
        if stage == DATASET:
            continue
        for path in sorted((Path(root) / stage).glob(f"*/{MANIFEST}")):
            if not is_stage_key(path.parent.name):
                continue
            try:
                manifest = find_manifest(root, stage, path.parent.name)
            except IntegrityError as exc:
                raise GcError(f"cannot tell which dataset versions {stage}/{path.parent.name} uses: {exc}") from None
            for name, key in (manifest.inputs if manifest else {}).items():
                if stage_of(name) == DATASET:
                    found.setdefault(key, f"{stage}/{manifest.key if manifest else path.parent.name}")
    return found


def collect(
    root: Path | str, *, delete: bool = False, versions: bool = False, min_age: float = MIN_AGE_HOURS * 3600
) -> Collection:
    """Find (and with `delete`, remove) the parts no kept dataset version uses and, with `versions`,
    the finished dataset versions nothing references. Nothing younger than `min_age` seconds is touched."""
    root = Path(root)
    result = Collection(root=str(root), deleted=delete)
    result.busy = _builds_in_progress(root)
    cutoff = time.time() - min_age
    referenced = referenced_versions(root) if versions else {}
    listed: set[str] = set()
    for folder in sorted(p for p in (root / DATASET).glob("*") if p.is_dir() and is_stage_key(p.name)):
        manifest = folder / MANIFEST
        if versions and manifest.is_file() and folder.name not in referenced and _mtime(manifest) < cutoff:
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            why = "no alias and no finished stage folder references it"
            result.versions.append(Removable(folder.relative_to(root).as_posix(), size, why))
            continue
        try:
            listed.update(entry.path for entry in part_entries(folder))
        except IntegrityError as exc:
            raise GcError(f"cannot tell which parts {folder} uses: {exc}") from None
        result.kept_versions += 1
    shared = parts_dir(root, DATASET)
    for path in sorted(shared.glob("*")) if shared.is_dir() else []:
        name = path.name
        part = name if name.endswith(".arrow") else name.removesuffix(".json") + ".arrow"
        if part in listed or not path.is_file():
            result.kept_parts += name.endswith(".arrow")
            continue
        if _mtime(path) >= cutoff:
            result.kept_parts += name.endswith(".arrow")
            continue
        why = "left by an interrupted write" if name.startswith(".") else "no dataset version uses it"
        result.parts.append(Removable(path.relative_to(root).as_posix(), path.stat().st_size, why))
    if delete and not result.busy:
        _remove(root, result)
    return result


def _remove(root: Path, result: Collection) -> None:
    for version in result.versions:
        folder = root / version.path
        (folder / MANIFEST).unlink(missing_ok=True)  # first: a half-removed folder reads as unfinished
        shutil.rmtree(folder, ignore_errors=True)
    for part in result.parts:
        (root / part.path).unlink(missing_ok=True)


def _builds_in_progress(root: Path) -> list[str]:
    """The stage keys whose build holds its lock on this machine (`stage_runner.key_lock`): a dataset build
    lists its parts only when it ends, and a build of a later stage may be reading a version nothing else
    references yet."""
    busy = []
    for stage in STAGES:
        for lock in sorted((root / stage).glob(".*.lock")):
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        busy.append(f"{stage}/{lock.name[1:].removesuffix('.lock')}")
                    continue
                fcntl.flock(fh, fcntl.LOCK_UN)
    return busy


def _mtime(path: Path) -> float:
    return path.stat().st_mtime
