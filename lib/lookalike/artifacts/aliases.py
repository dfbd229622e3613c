"""Named pointers to a finished chain of stage folders (`production`, `latest`).

`<root>/aliases/<name>.json` holds the stage keys of one run (dataset, encoder, embeddings,
index, evaluation) and where they came from; it is replaced atomically, so a reader sees
the old chain or the new one, never half of each. Every move is appended to
`<root>/aliases/history.jsonl`, so an alias can be traced (and rolled back) by hand. The history
is rewritten whole and renamed into place under a lock, never appended to in place, so a crash
cannot leave half a line that a later move would be glued onto; a torn line written by an older
version (or by hand) is skipped and reported (`HistoryWarning`), never fatal.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lookalike.artifacts.shared_root import read_manifest, store_at
from lookalike.artifacts.stage_runner import storage_error
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import CHAIN, STAGES, walk_chain
from lookalike.core.manifest import (
    MANIFEST,
    Manifest,
    atomic_write_bytes,
    check_manifest_sha256,
    install_stage,
    is_stage_key,
    manifest_sha256,
    not_a_key,
    parts_dir,
)

ALIASES = "aliases"
HISTORY = "history.jsonl"
PRODUCTION = "production"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class AliasError(LookalikeError, LookupError):
    """An alias is missing, malformed or points at stage folders that no longer exist."""


class HistoryWarning(UserWarning):
    """A line of `aliases/history.jsonl` that is not a whole alias entry was skipped."""


class Alias(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    stages: dict[str, str] = Field(description="stage -> key")
    set_at: str
    source: dict[str, Any] = Field(default_factory=dict, description="who moved it (flow run id, command)")
    manifest_sha256: dict[str, str] = Field(
        default_factory=dict,
        description="stage -> sha256 of the manifest.json it names, when set (empty: set before the hash chain)",
    )

    @field_validator("stages")
    @classmethod
    def _stage_keys_only(cls, stages: dict[str, str]) -> dict[str, str]:
        # readers join these onto the root: a path or `..` here would read outside it
        for stage, key in stages.items():
            if stage not in STAGES:
                raise ValueError(f"{stage!r} is not a stage ({', '.join(STAGES)})")
            if not is_stage_key(key):
                raise ValueError(not_a_key(key, stage))
        return stages

    def manifest(self, root: Path | str, stage: str) -> Manifest:
        """The finished manifest this alias points at for `stage`."""
        if stage not in self.stages:
            raise AliasError(f"alias {self.name!r} has no {stage} stage (it has: {', '.join(self.stages)})")
        manifest = read_manifest(root, stage, self.stages[stage])
        # the alias is the last link of the hash chain: the manifests it names, as they were
        check_manifest_sha256(
            root, stage, manifest.key, self.manifest_sha256.get(stage), f"alias {self.name!r} ({self.name}.json)"
        )
        return manifest


def alias_path(root: Path | str, name: str) -> Path:
    if not _NAME.match(name):
        raise AliasError(f"invalid alias name {name!r}: use lowercase letters, digits, '-' or '_'")
    return Path(root) / ALIASES / f"{name}.json"


def set_alias(root: Path | str, name: str, stages: dict[str, str], source: dict[str, Any] | None = None) -> Alias:
    """Point `name` at these stage keys (each must be a finished folder) and log the move. The alias
    records the sha256 of each manifest it names (the last link of the hash chain)."""
    Alias(name=name, stages=dict(stages), set_at="")  # the keys are checked before any path is built
    for stage, key in stages.items():
        read_manifest(root, stage, key)
    alias = Alias(
        name=name,
        stages=dict(stages),
        source=source or {},
        set_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        manifest_sha256={stage: manifest_sha256(root, stage, key) for stage, key in stages.items()},
    )
    path = alias_path(root, name)
    try:
        atomic_write_bytes(path, alias.model_dump_json(indent=2).encode())
        _append_history(root, alias)
    except OSError as exc:  # a full disk: the one line a stage gives, not a traceback
        error = storage_error(exc, root, f"the alias {name!r}", f"free disk space, then point {name!r} again", path)
        if error is None:
            raise
        raise error from None
    store_at(root).share_files([f"{ALIASES}/{name}.json", f"{ALIASES}/{HISTORY}"])  # when root is a shared store's copy
    return alias


def read_alias(root: Path | str, name: str) -> Alias:
    path = alias_path(root, name)
    if not path.is_file():
        raise AliasError(
            f"no {name!r} alias under {root}: build and promote an index first "
            "(`lookalike run`, or the retrain-weekly deployment; a run the promotion gate refused is promoted by "
            "hand with `lookalike promote <index key>`, and `--index latest` names the last run)"
        )
    try:
        return Alias.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise AliasError(
            f"{path} is not a valid alias file ({_first_error(exc)}); nothing it names was read. "
            "Point it at an index again with `lookalike promote <index key>` (or delete it and re-run `lookalike run`)"
        ) from None


def alias_manifest(root: Path | str, name: str, stage: str) -> Manifest:
    """The finished manifest that alias `name` points at for `stage`."""
    return read_alias(root, name).manifest(root, stage)


def alias_history(root: Path | str, name: str | None = None) -> list[Alias]:
    """Every position `name` (every alias, when None) has had, oldest first. Lines that are not whole
    entries are skipped, each reported as a `HistoryWarning` (the CLI prints them as `warning:` lines)."""
    return [a for a in _read_history(Path(root) / ALIASES / HISTORY) if name is None or a.name == name]


def list_aliases(root: Path | str) -> dict[str, Alias]:
    """Every alias under `root` by name. An alias file that cannot be read is skipped and reported
    as a warning (`read_alias` says why), so one bad file does not hide the others."""
    aliases = {}
    for path in sorted((Path(root) / ALIASES).glob("*.json")):
        try:
            aliases[path.stem] = read_alias(root, path.stem)
        except AliasError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return aliases


def _read_history(path: Path) -> list[Alias]:
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    moves = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            moves.append(Alias.model_validate_json(line))
        except ValueError as exc:
            torn = number == len(lines) and not raw.endswith(b"\n")  # no newline: an append cut short
            why = "a torn last line (an interrupted append)" if torn else f"not an alias entry ({_first_error(exc)})"
            warnings.warn(f"{path}:{number}: skipped {why}; the other entries are used", HistoryWarning, stacklevel=3)
    return moves


def _first_error(exc: ValueError) -> str:
    """The first reason pydantic gives, without its input echo and documentation link."""
    errors = getattr(exc, "errors", None)
    return str(errors()[0]["msg"]).removeprefix("Value error, ") if callable(errors) else str(exc)


def _append_history(root: Path | str, alias: Alias) -> None:
    """Add one entry to the history: the whole file (its readable entries plus this one) is written
    to a temp file and renamed over it, under a lock, so a crash leaves the old history or the new one."""
    path = Path(root) / ALIASES / HISTORY
    with _history_lock(path):
        with warnings.catch_warnings():  # already reported by the reads that led to this move
            warnings.simplefilter("ignore", HistoryWarning)
            entries = _read_history(path)
        lines = [json.dumps(a.model_dump(mode="json")) for a in [*entries, alias]]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


@contextmanager
def _history_lock(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the history between processes on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def chain_for_index(root: Path | str, index_key: str) -> dict[str, str]:
    """The stage keys of the run that built index `index_key`: from the alias history when a
    run recorded it (evaluation included), else followed backwards through the manifests."""
    for name in ("latest", PRODUCTION):
        for alias in reversed(alias_history(root, name)):
            if alias.stages.get("index") == index_key:
                return dict(alias.stages)
    chain = walk_chain(lambda stage, key: read_manifest(root, stage, key), "index", index_key, root)
    stages = {stage: chain[stage].key for stage in CHAIN}
    if evaluation := evaluations_by_index(root).get(index_key):
        stages["evaluation"] = evaluation.key
    return stages


def evaluations_by_index(root: Path | str) -> dict[str, Manifest]:
    """index key -> the newest finished evaluation of that index under `root`. An evaluation whose
    manifest cannot be read is left out with a warning naming it: one damaged folder does not hide
    every other index's scores."""
    found = {}
    for path in sorted((Path(root) / "evaluation").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime):
        try:
            evaluation = read_manifest(root, "evaluation", path.parent.name)
        except LookalikeError as exc:
            warnings.warn(f"skipped evaluation {path.parent.name}: {exc}", stacklevel=2)
            continue
        if "index" in evaluation.inputs:
            found[evaluation.inputs["index"]] = evaluation  # newer ones replace older ones
    return found


def copy_index_chain(root: Path | str, folder: Path) -> str:
    """Copy a finished index folder of another root (`<other root>/index/<key>`), with everything
    it was built from and its evaluation, into `root`, each file verified against its manifest;
    the index key. An alias names keys under its own root only, never a path."""
    folder = folder.expanduser().resolve()
    if folder.parent.name != "index" or not is_stage_key(folder.name) or not (folder / MANIFEST).is_file():
        raise AliasError(f"{folder} is not a finished index folder (<artifacts root>/index/<key>/ with a {MANIFEST})")
    source, key = folder.parents[1], folder.name
    if source == Path(root).resolve():
        return key
    copied: set[tuple[str, str]] = set()
    for stage, stage_key in chain_for_index(source, key).items():
        for manifest in walk_chain(lambda s, k: read_manifest(source, s, k), stage, stage_key, source).values():
            if (manifest.stage, manifest.key) in copied:
                continue
            copied.add((manifest.stage, manifest.key))
            origin = source / manifest.stage / manifest.key
            install_stage(
                root,
                (origin / MANIFEST).read_bytes(),  # the same bytes: what consumers recorded of it still holds
                lambda name, tmp, origin=origin: shutil.copyfile(origin / name, tmp),  # type: ignore[misc]
                f"{origin}/",
                expect=(manifest.stage, manifest.key),
                fetch_part=lambda name, tmp, shared=parts_dir(source, manifest.stage): shutil.copyfile(  # type: ignore[misc]
                    shared / name, tmp
                ),
            )
    return key


def previous_position(root: Path | str, name: str) -> Alias:
    """Where `name` pointed before its current index (for a rollback)."""
    history = alias_history(root, name)
    current = read_alias(root, name).stages.get("index")
    for alias in reversed(history):
        if alias.stages.get("index") != current:
            return alias
    raise AliasError(
        f"{name!r} has pointed at no other index than {current} "
        f"(see {Path(root) / ALIASES / HISTORY}); nothing to roll back to"
    )
