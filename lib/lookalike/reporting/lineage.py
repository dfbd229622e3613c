"""What each stage is as a W&B artifact: name, type, files, metadata, and what it was made from.

Pure (no wandb): `lookalike.reporting.tracking` logs these specs. The producing run logs a stage's artifact,
each consuming run declares the same files as its input, so W&B's lineage graph reads
dataset → pretrain → model → embed → embeddings → build-index → faiss-embeddings.
Producer and consumer build the spec from the same manifest, so both sides name the same
content digest and W&B resolves them to one artifact version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.core.graph import STAGES
from lookalike.core.manifest import MANIFEST, Manifest, stage_dir

# stage -> (W&B artifact type, job type of the run that makes it)
ARTIFACT_TYPES = {"dataset": "dataset", "encoder": "model", "embeddings": "embeddings", "index": "faiss-embeddings"}
JOB_TYPES = {"dataset": "dataset", "encoder": "pretrain", "embeddings": "embed", "index": "build-index"}
LINEAGE_STAGES = tuple(ARTIFACT_TYPES)


def lineage_inputs(stage: str) -> tuple[str, ...]:
    """The stages a stage's artifact is made from, as the stage graph keys them."""
    return tuple(name for name in STAGES[stage].inputs if name in ARTIFACT_TYPES)


@dataclass(frozen=True)
class ArtifactSpec:
    """One stage folder as a W&B artifact."""

    stage: str
    key: str
    name: str
    type: str
    folder: Path
    files: tuple[str, ...]
    metadata: dict[str, Any]
    references: dict[str, str] = field(default_factory=dict)  # entry name -> URI, tracked not uploaded

    @property
    def ref(self) -> str:
        """`name:<stage key>`: every version carries its stage key as an alias."""
        return f"{self.name}:{self.key}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:100] or "dataset"


def artifact_name(stage: str, manifests: dict[str, Manifest]) -> str:
    """`<source>-<split>` for a dataset, `<method>-encoder`, `<method>-vectors` and
    `<method>-embeddings` (the article's name for the index) for the rest."""
    if stage == "dataset":
        settings = manifests["dataset"].settings
        source = settings["source"]
        kind, _, location = settings.get("resolved", "").partition(":")
        if source != "sample" and kind and kind != "hub":  # a local path: its name, not the machine's layout
            source = Path(location).name
        return _slug(f"{source}-{settings['split']}")
    method = manifests["encoder"].settings["method"]
    return f"{method}-" + {"encoder": "encoder", "embeddings": "vectors", "index": "embeddings"}[stage]


def source_reference(dataset: Manifest) -> dict[str, str]:
    """A tracked (not uploaded) reference to a hub dataset at the commit it was read from."""
    resolved = dataset.settings.get("resolved", "")
    kind, _, location = resolved.partition(":")
    if kind != "hub":
        return {}
    content = dataset.settings.get("content", "")
    revision = content.rpartition("@")[2] if "@" in content else dataset.settings.get("revision")
    return {"source": f"hf://datasets/{location}" + (f"@{revision}" if revision else "")}


def _scalars(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}


def stage_artifact(
    root: Path | str, stage: str, manifests: dict[str, Manifest], extra: dict[str, Any] | None = None
) -> ArtifactSpec:
    """The artifact for `manifests[stage]`; `manifests` holds its chain (dataset and encoder at
    least, for the names).

    The dataset artifact is a reference: its manifest (content fingerprint, resolved source,
    row count, label names) plus, for a hub dataset, an `hf://` reference. The snapshot itself
    is not uploaded; a loader rebuilds it from the source and checks the content fingerprint.
    The other stages upload every file their manifest lists, plus the manifest.
    """
    manifest = manifests[stage]
    upload = () if stage == "dataset" else tuple(f.path for f in manifest.files)
    chain = {s: f"{artifact_name(s, manifests)}:{manifests[s].key}" for s in lineage_inputs(stage) if s in manifests}
    metadata = {
        "stage": stage,
        "stage_key": manifest.key,
        "code_version": manifest.code_version,
        "settings": manifest.settings,
        "stats": _scalars(manifest.stats),
        "inputs": manifest.inputs,
        "input_artifacts": chain,
        "sha256": {f.path: f.sha256 for f in manifest.files},
        **(extra or {}),
    }
    return ArtifactSpec(
        stage=stage,
        key=manifest.key,
        name=artifact_name(stage, manifests),
        type=ARTIFACT_TYPES[stage],
        folder=stage_dir(root, stage, manifest.key),
        files=(*upload, MANIFEST),
        metadata=metadata,
        references=source_reference(manifest) if stage == "dataset" else {},
    )
