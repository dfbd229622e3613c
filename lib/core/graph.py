"""The stage graph, defined once: each stage's inputs and code version, and the one chain walker.

A stage's key hashes its own settings, the keys of its keyed inputs and its code version
(`stage_key`), so changing anything upstream changes every key downstream. Every other
module asks this one which stages exist, what each is built from and in which order a
chain is followed; adding a stage is one entry here plus its folder under `lookalike.stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from lookalike.core.manifest import Manifest, stage_key

StageName = Literal["dataset", "encoder", "embeddings", "index", "evaluation"]


@dataclass(frozen=True)
class StageSpec:
    """One stage: the inputs its key hashes (input name -> the stage that makes it), the inputs
    its manifest records besides (for lineage, not keyed), and its code version."""

    name: str
    inputs: dict[str, str]
    code_version: int
    recorded: dict[str, str] | None = None


STAGES: dict[str, StageSpec] = {
    "dataset": StageSpec("dataset", {}, code_version=1),
    "encoder": StageSpec("encoder", {"dataset": "dataset"}, code_version=1),
    "embeddings": StageSpec("embeddings", {"dataset": "dataset", "encoder": "encoder"}, code_version=1),
    # the index is keyed by its vectors only; it records what they were made from too
    "index": StageSpec(
        "index", {"embeddings": "embeddings"}, code_version=3, recorded={"dataset": "dataset", "encoder": "encoder"}
    ),
    # `queries`, the held-out split, is a dataset stage (optional: leave-one-out has none)
    "evaluation": StageSpec(
        "evaluation", {"dataset": "dataset", "index": "index", "queries": "dataset"}, code_version=3
    ),
}
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
# What a served index is made of, first to last: the stages a query loads and a mirror must hold.
CHAIN: tuple[str, ...] = ("dataset", "encoder", "embeddings", "index")


def stage_of(input_name: str) -> str:
    """The stage that makes an input (`queries` -> `dataset`)."""
    for spec in STAGES.values():
        for name, stage in {**spec.inputs, **(spec.recorded or {})}.items():
            if name == input_name:
                return stage
    if input_name in STAGES:
        return input_name
    raise KeyError(f"no stage makes an input named {input_name!r}")


def key_for(stage: str, settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """The key of `stage` for these key settings and keyed input keys (input name -> key)."""
    spec = STAGES[stage]
    unknown = set(inputs) - set(spec.inputs)
    if unknown:
        raise ValueError(f"{stage} is not keyed by {sorted(unknown)}; its inputs are {sorted(spec.inputs)}")
    return stage_key(stage, settings, inputs, spec.code_version)


def walk_chain(read: Callable[[str, str], Manifest], stage: str, key: str) -> dict[str, Manifest]:
    """Every stage folder `stage/key` was made from, itself included, by following each
    manifest's recorded inputs: {input name: manifest}. `read(stage, key)` returns a finished
    manifest (from a local root, a bucket or W&B) or raises; each folder is read once."""
    found: dict[str, Manifest] = {}
    seen: set[tuple[str, str]] = set()
    wanted = [(stage, stage, key)]
    while wanted:
        name, stage_name, stage_key_ = wanted.pop(0)
        if (stage_name, stage_key_) in seen:
            continue
        seen.add((stage_name, stage_key_))
        manifest = read(stage_name, stage_key_)
        found.setdefault(name, manifest)
        wanted.extend(
            (upstream, stage_of(upstream), upstream_key) for upstream, upstream_key in manifest.inputs.items()
        )
    return found
