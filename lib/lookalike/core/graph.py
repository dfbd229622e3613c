"""The stage graph, defined once: each stage's inputs and code version, and the one chain walker.

A stage's key hashes its own settings, the keys of its keyed inputs and its code version
(`stage_key`), so changing anything upstream changes every key downstream. Every other
module asks this one which stages exist, what each is built from and in which order a
chain is followed; adding a stage is one entry here plus its folder under `lookalike.stages`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lookalike.core.manifest import Manifest, check_manifest_sha256, manifest_sha256, stage_key

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
    # encoder and embeddings 2 (issue 40): a JPEG is decoded at the smallest DCT scale that keeps twice the size
    # it is fitted to (`draft_side`), not at full size, which moves the pixels of large JPEGs a little; other
    # images (PNG, the sample) give the same bytes as before. The evaluation's baselines decode the same way;
    # its key moves with the index's.
    "encoder": StageSpec("encoder", {"dataset": "dataset"}, code_version=2),
    "embeddings": StageSpec("embeddings", {"dataset": "dataset", "encoder": "encoder"}, code_version=2),
    # the index is keyed by its vectors only; it records what they were made from too
    "index": StageSpec(
        "index", {"embeddings": "embeddings"}, code_version=5, recorded={"dataset": "dataset", "encoder": "encoder"}
    ),
    # `queries`, the held-out split, is a dataset stage (optional: leave-one-out has none)
    "evaluation": StageSpec(
        "evaluation", {"dataset": "dataset", "index": "index", "queries": "dataset"}, code_version=4
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


def input_manifest_sha256(root: Path | str, inputs: dict[str, str]) -> dict[str, str]:
    """sha256 of each input's `manifest.json` under `root` (input name -> hex): what a stage records
    of the manifests it was built from, the links of the hash chain."""
    return {name: manifest_sha256(root, stage_of(name), key) for name, key in inputs.items()}


def check_inputs(root: Path | str, manifest: Manifest) -> None:
    """Refuse when an input manifest under `root` is not the one `manifest` recorded (edited since)."""
    for name, key in manifest.inputs.items():
        recorded = manifest.input_sha256.get(name)
        check_manifest_sha256(root, stage_of(name), key, recorded, f"{manifest.stage}/{manifest.key}")


def walk_chain(
    read: Callable[[str, str], Manifest], stage: str, key: str, root: Path | str | None = None
) -> dict[str, Manifest]:
    """Every stage folder `stage/key` was made from, itself included, by following each
    manifest's recorded inputs: {input name: manifest}. `read(stage, key)` returns a finished
    manifest (from a local root, a bucket or W&B) or raises; each folder is read once. With
    `root` (where `read` leaves the manifests it returns), each input's manifest is checked
    against the sha256 its consumer recorded, so a manifest edited by hand is refused."""
    found: dict[str, Manifest] = {}
    seen: set[tuple[str, str]] = set()
    # (input name, stage, key, the sha256 its consumer recorded, the consumer)
    wanted: list[tuple[str, str, str, str | None, str]] = [(stage, stage, key, None, "")]
    while wanted:
        name, stage_name, stage_key_, recorded, consumer = wanted.pop(0)
        if (stage_name, stage_key_) in seen:
            if root is not None:  # read already, but another consumer recorded it too
                check_manifest_sha256(root, stage_name, stage_key_, recorded, consumer)
            continue
        seen.add((stage_name, stage_key_))
        manifest = read(stage_name, stage_key_)
        if root is not None:
            check_manifest_sha256(root, stage_name, stage_key_, recorded, consumer)
        found.setdefault(name, manifest)
        wanted.extend(
            (
                upstream,
                stage_of(upstream),
                upstream_key,
                manifest.input_sha256.get(upstream),
                f"{manifest.stage}/{manifest.key}",
            )
            for upstream, upstream_key in manifest.inputs.items()
        )
    return found
