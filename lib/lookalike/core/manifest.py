"""Stage folders, stage keys and manifests: the hand-off contract between stages.

Every stage writes into `<root>/<stage>/<key>/`. `manifest.json` is written last and
atomically; a folder without one is unfinished and is never read as a result.
Readers verify sha256 of the files they load before loading them.

Manifests are protected by a hash chain: a stage records the sha256 of each input's
`manifest.json` as it was when the stage was built (`input_sha256`), and an alias records
those of the manifests it names, so a manifest edited afterwards (its stats feed the promotion
gate and the app) is refused by whatever reads it through them. A folder written before the
chain records nothing, and nothing is checked for it.

A stage folder may also use content-addressed parts shared with other folders of its stage (the
dataset stage's image bytes, so a new version of a grown collection writes only its new images):
they live once in `<root>/<stage>/parts/<name>`, and the folder's `parts.json` (a listed file,
so its sha256 is checked like any other) names each with its size and sha256. A part is hashed
whole when it is written or installed; opening a folder checks each part's size only, so a
terabyte of parts is not re-read on every open.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookalike.core.errors import LookalikeError

MANIFEST = "manifest.json"
PART_LIST = "parts.json"
PARTS = "parts"
Status = Literal["computed", "cached", "resumed"]
# What `stage_key` makes: the only folder names a stage may have, so a key read from an alias, its
# history or the command line is checked against it before it becomes part of a path.
STAGE_KEY = re.compile(r"[0-9a-f]{16}")


class IntegrityError(LookalikeError, RuntimeError):
    """A stage file does not match its manifest (tampered, truncated or missing)."""


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """What a finished stage folder holds and how it was made."""

    model_config = ConfigDict(frozen=True)
    stage: str
    key: str
    code_version: int
    created: str
    settings: dict[str, Any]
    inputs: dict[str, str] = Field(default_factory=dict, description="input stage -> key")
    input_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="input name -> sha256 of its manifest.json when this stage was built (empty: written before "
        "the hash chain, not checked)",
    )
    files: list[FileEntry]
    stats: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.path == name:
                return entry
        raise IntegrityError(f"{self.stage}/{self.key}: manifest lists no file {name!r}")


def stage_key(stage: str, settings: dict[str, Any], inputs: dict[str, str], code_version: int) -> str:
    """Hash of everything that can change a stage's output; 16 hex chars."""
    payload = json.dumps(
        {"stage": stage, "settings": settings, "inputs": inputs, "code_version": code_version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_stage_key(value: object) -> bool:
    """Whether `value` has the form of a stage key (16 lowercase hex characters)."""
    return isinstance(value, str) and STAGE_KEY.fullmatch(value) is not None


def not_a_key(value: object, stage: str) -> str:
    """The message for a value that should be a `stage` key and is not (too long ones shortened)."""
    shown = repr(value) if len(repr(value)) <= 200 else f"{repr(value)[:200]}..."
    return f"{stage} {shown} is not a stage key (16 lowercase hex characters, a folder name under {stage}/)"


def stage_dir(root: Path | str, stage: str, key: str) -> Path:
    return Path(root) / stage / key


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    path = folder / name
    return FileEntry(path=name, sha256=sha256_file(path), bytes=path.stat().st_size)


def manifest_sha256(root: Path | str, stage: str, key: str) -> str:
    """sha256 of a finished folder's `manifest.json` as it is on disk (what the hash chain records)."""
    return sha256_file(stage_dir(root, stage, key) / MANIFEST)


def check_manifest_sha256(root: Path | str, stage: str, key: str, recorded: str | None, recorded_by: str) -> None:
    """Refuse `stage/key`'s manifest when it is not the one `recorded_by` recorded (its sha256 differs).
    `recorded` None: nothing was recorded (written before the hash chain), nothing to check."""
    if recorded is None:
        return
    path = stage_dir(root, stage, key) / MANIFEST
    if manifest_sha256(root, stage, key) != recorded:
        raise IntegrityError(
            f"{path} does not match the sha256 {recorded_by} recorded of it: it changed since (edited by hand, "
            f"or the folder was rebuilt), so its stats are not trusted; restore it, or delete {path.parent} and "
            "the folders built from it, re-run and promote again"
        )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_path(path: Path) -> _AtomicPath:
    """Context manager yielding a temp path that is renamed onto `path` on success.

    For writers that need a filename (faiss.write_index, torch.save, parquet).
    """
    return _AtomicPath(path)


class _AtomicPath:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_manifest(
    folder: Path,
    *,
    stage: str,
    key: str,
    code_version: int,
    settings: dict[str, Any],
    inputs: dict[str, str],
    files: Iterable[str],
    stats: dict[str, Any],
    timings: dict[str, float],
    input_sha256: dict[str, str] | None = None,
) -> Manifest:
    """Hash the listed files and write `manifest.json` last, atomically. `input_sha256` is the
    sha256 of each input's manifest (input name -> hex), recorded for the hash chain."""
    manifest = Manifest(
        stage=stage,
        key=key,
        code_version=code_version,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings=settings,
        inputs=inputs,
        input_sha256=input_sha256 or {},
        files=[file_entry(folder, name) for name in sorted(files)],
        stats=stats,
        timings={k: round(v, 3) for k, v in timings.items()},
    )
    atomic_write_bytes(folder / MANIFEST, manifest.model_dump_json(indent=2).encode())
    return manifest


def find_manifest(root: Path | str, stage: str, key: str) -> Manifest | None:
    """The manifest of a finished stage folder, or None when it is absent or unfinished.

    Raises:
        IntegrityError: a manifest is there but unreadable. It is written atomically, so it
            was damaged afterwards; "not finished" would send the user looking for the wrong cause.
    """
    path = stage_dir(root, stage, key) / MANIFEST
    if not path.is_file():
        return None
    fix = f"delete {path.parent} and re-run to rebuild it"
    try:
        data = json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, or bytes that are not text at all
        raise IntegrityError(f"{path} is not valid JSON: {exc}; {fix}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "manifest"
        raise IntegrityError(f"{path} is not a lookalike manifest ({where}: {first['msg']}); {fix}") from None


def verified_path(root: Path | str, manifest: Manifest, name: str) -> Path:
    """Path of a manifest-listed file after checking its size and sha256."""
    entry = manifest.file(name)
    path = stage_dir(root, manifest.stage, manifest.key) / name
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; delete {path.parent} and re-run to rebuild it")
    if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
        raise IntegrityError(
            f"{path} does not match its manifest (sha256 differs): it was modified after it was "
            f"written; delete {path.parent} and re-run to rebuild it"
        )
    return path


def parts_dir(root: Path | str, stage: str) -> Path:
    """Where the parts shared by `stage`'s folders live (not a stage key, so never read as a folder)."""
    return Path(root) / stage / PARTS


def part_entries(folder: Path) -> list[FileEntry]:
    """The shared parts a stage folder's `parts.json` lists (none without one), in its order."""
    return [entry for entry, _ in _listed_parts(folder)]


def _listed_parts(folder: Path) -> list[tuple[FileEntry, dict[str, Any]]]:
    path = folder / PART_LIST
    if not path.is_file():
        return []
    try:
        listed = json.loads(path.read_bytes())["parts"]
        return [(FileEntry(path=p["name"], sha256=p["sha256"], bytes=p["bytes"]), p) for p in listed]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"{path} is not a list of parts ({exc}); delete {folder} and re-run to rebuild it"
        ) from None


def install_parts(
    root: Path | str, stage: str, folder: Path, fetch_part: Callable[[str, Path], None] | None, where: str
) -> int:
    """Fetch the parts `folder`'s `parts.json` lists that `root` lacks (at their size), each verified against
    its sha256 before it is kept; how many were fetched. `fetch_part(name, target)` writes one part. Each
    part's entry is kept beside it as its record (`<name less .arrow>.json`), by which a later folder of the
    stage finds it and reuses it without reading it."""
    fetched = 0
    for entry, listed in _listed_parts(folder):
        target = parts_dir(root, stage) / entry.path
        record = target.with_name(f"{target.stem}.json")
        if has_size(target, entry.bytes):
            if not record.is_file():
                atomic_write_bytes(record, json.dumps(listed).encode())
            continue
        if fetch_part is None:
            raise IntegrityError(
                f"{where} uses shared part {stage}/{PARTS}/{entry.path}, which {root} lacks and this origin cannot "
                "provide; load it from the artifacts root or S3 mirror that built it"
            )
        _fetch_verified(
            fetch_part, entry, target, f"{where}{PARTS}/{entry.path} does not match the sha256 {PART_LIST} records"
        )
        atomic_write_bytes(record, json.dumps(listed).encode())
        fetched += 1
    return fetched


def _fetch_verified(fetch: Callable[[str, Path], None], entry: FileEntry, target: Path, mismatch: str) -> None:
    """`fetch(entry.path, ...)` into `target`, kept only if its size and sha256 are the entry's."""
    with atomic_path(target) as tmp:
        fetch(entry.path, tmp)
        if not matches_entry(tmp, entry):
            raise IntegrityError(
                f"{mismatch}: it changed after it was published; refusing to load it. "
                "Publish the stage again from a good copy."
            )


def install_stage(
    root: Path | str,
    raw_manifest: bytes,
    fetch: Callable[[str, Path], None],
    where: str,
    expect: tuple[str, str],
    fetch_part: Callable[[str, Path], None] | None = None,
) -> Manifest:
    """Copy a stage folder from elsewhere (S3, W&B) into `root/<stage>/<key>/`, verified.

    `fetch(name, target)` writes one listed file to `target`. Each file is checked against
    the manifest's size and sha256 before it is kept (a mismatch is refused and never left in
    `root`); files already there with the right sha256 are not fetched again; the manifest is
    written last, so the folder counts as finished only when all of it verified. `where` names
    the origin in errors; `expect` is the (stage, key) the caller asked for. The shared parts its
    `parts.json` lists come through `fetch_part(name, target)` (see `install_parts`).
    """
    try:
        manifest = Manifest.model_validate_json(raw_manifest)
    except ValueError:
        raise IntegrityError(f"{where}{MANIFEST} is not a lookalike manifest") from None
    if (manifest.stage, manifest.key) != expect:
        raise IntegrityError(f"{where}{MANIFEST} describes {manifest.stage}/{manifest.key}, not {'/'.join(expect)}")
    folder = stage_dir(root, manifest.stage, manifest.key)
    for entry in manifest.files:
        target = folder / entry.path
        if matches_entry(target, entry):
            continue
        _fetch_verified(fetch, entry, target, f"{where}{entry.path} does not match its manifest (sha256 differs)")
    install_parts(root, manifest.stage, folder, fetch_part, where)
    atomic_write_bytes(folder / MANIFEST, raw_manifest)
    return manifest


def complete_manifest(root: Path | str, stage: str, key: str) -> Manifest | None:
    """The manifest of a finished folder whose listed files and shared parts are all present at their sizes (a
    cache that needs no download; loaders still check every sha256 before reading), else None."""
    try:
        manifest = find_manifest(root, stage, key)
    except IntegrityError:  # a damaged copy in a cache: fetched again, the manifest last
        return None
    folder = stage_dir(root, stage, key)
    if manifest is None or not all(has_size(folder / f.path, f.bytes) for f in manifest.files):
        return None
    try:
        parts = part_entries(folder)
    except IntegrityError:
        return None
    if not all(has_size(parts_dir(root, stage) / p.path, p.bytes) for p in parts):
        return None
    return manifest


def has_size(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def matches_entry(path: Path, entry: FileEntry) -> bool:
    return has_size(path, entry.bytes) and sha256_file(path) == entry.sha256
