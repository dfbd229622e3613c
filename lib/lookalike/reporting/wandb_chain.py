"""Load an index by its W&B artifact path (`entity/project/<method>-embeddings:production`).

Follows the lineage the runs logged (each artifact's metadata names its inputs by
`name:<stage key>`) and installs index, embeddings, encoder and dataset into a local cache with
the same `<stage>/<key>/` layout as an artifacts root. Every downloaded file is checked against
the stage manifest's sha256 before it is kept, so FAISS and torch only ever read verified bytes.
The dataset artifact is a reference (its manifest, not the images): the snapshot is rebuilt
from the source it names and accepted only when the source still has the same content
fingerprint, i.e. the same stage key.

Needs W&B online (the public API); `api` is that client, injectable for tests.
"""

from __future__ import annotations

from pathlib import Path

from lookalike.core.manifest import (
    MANIFEST,
    IntegrityError,
    Manifest,
    atomic_write_bytes,
    complete_manifest,
    install_stage,
    stage_dir,
)
from lookalike.core.settings import DatasetSettings
from lookalike.reporting.lineage import ARTIFACT_TYPES
from lookalike.reporting.tracking import download_entry, open_artifact, parse_wandb_ref, public_api
from lookalike.stages.dataset.stage import dataset_key, run_dataset_stage


def fetch_wandb_chain(ref: str, cache: Path, api=None) -> tuple[Path, str]:
    """Download and verify the chain of the W&B index artifact `ref` into `cache`.

    Returns:
        (local artifacts root holding the chain, the index stage key under it)
    """
    match = parse_wandb_ref(ref)
    if match is None:
        raise ValueError(f"{ref!r} is not a W&B artifact path (entity/project/name:alias)")
    entity, project = match["entity"], match["project"]
    root = Path(cache) / "wandb" / entity / project
    api = api or public_api()
    prefix = f"{entity}/{project}/"
    index, inputs = _install(api, ref.removeprefix("wandb://"), "index", root)
    embeddings, inputs = _install(api, prefix + _input(inputs, "embeddings", ref), "embeddings", root)
    encoder, _ = _install(api, prefix + _input(inputs, "encoder", ref), "encoder", root)
    dataset = _dataset(api, prefix + _input(inputs, "dataset", ref), root)
    chain = {"index": index, "embeddings": embeddings, "encoder": encoder, "dataset": dataset}
    for stage, manifest in chain.items():  # the artifacts must be one chain, as their manifests say
        for upstream, key in manifest.inputs.items():
            if upstream in chain and chain[upstream].key != key:
                raise IntegrityError(
                    f"W&B artifact {ref}: {stage} {manifest.key} was built from {upstream} {key}, "
                    f"but its lineage names {upstream} {chain[upstream].key}"
                )
    return root, index.key


def _input(inputs: dict[str, str], stage: str, ref: str) -> str:
    if stage not in inputs:
        raise IntegrityError(
            f"W&B artifact {ref} does not name its {stage} input (logged by an older lookalike?); "
            "load it from an artifacts root or an S3 mirror instead"
        )
    return inputs[stage]


def _install(api, path: str, stage: str, root: Path) -> tuple[Manifest, dict[str, str]]:
    """One stage artifact into `root/<stage>/<key>/` (nothing downloaded when the cache is complete).
    Returns its manifest and the input artifacts its metadata names."""
    artifact, key = _open(api, path, stage)
    manifest = complete_manifest(root, stage, key)
    if manifest is None:
        raw = _read_manifest(artifact, stage_dir(root, stage, key))
        manifest = install_stage(
            root,
            raw,
            lambda name, tmp: download_entry(artifact, name, tmp),
            f"W&B artifact {path}: ",
            expect=(stage, key),
        )
    return manifest, dict(artifact.metadata.get("input_artifacts") or {})


def _open(api, path: str, stage: str):
    """(the artifact, its stage key), refusing an artifact that is not a lookalike stage."""
    artifact = open_artifact(api, path, ARTIFACT_TYPES[stage])
    metadata = artifact.metadata or {}
    if metadata.get("stage") != stage or not metadata.get("stage_key"):
        raise IntegrityError(f"W&B artifact {path} is not a lookalike {stage} stage (no stage_key in its metadata)")
    return artifact, metadata["stage_key"]


def _read_manifest(artifact, folder: Path) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f".{MANIFEST}.download"
    try:
        download_entry(artifact, MANIFEST, target)
        return target.read_bytes()
    finally:
        target.unlink(missing_ok=True)


def _dataset(api, path: str, root: Path) -> Manifest:
    """The dataset snapshot the index rows point at: from the cache, else rebuilt from its source."""
    artifact, key = _open(api, path, "dataset")
    cached = complete_manifest(root, "dataset", key)
    if cached is not None:
        return cached
    raw = _read_manifest(artifact, root / "dataset")
    recorded = Manifest.model_validate_json(raw)
    section = DatasetSettings.model_validate(
        {k: v for k, v in recorded.settings.items() if k in DatasetSettings.model_fields}
    )
    here, source, fingerprint = dataset_key(section, root)
    if here != recorded.key:
        raise IntegrityError(
            f"W&B artifact {path} references {recorded.settings.get('resolved')} with content "
            f"{recorded.settings.get('content')}, but {source.describe()} here has {fingerprint}: the images "
            "changed or are not on this machine. Load the index from an S3 mirror (which carries the snapshot) "
            "or from the artifacts root that built it."
        )
    rebuilt = run_dataset_stage(section, root).manifest
    if [f.model_dump() for f in rebuilt.files] != [f.model_dump() for f in recorded.files]:
        return rebuilt  # not the same bytes: the hash chain check that follows refuses it, naming the manifest
    # The same snapshot, byte for byte: keep the manifest the index recorded the sha256 of (the hash
    # chain), not the rebuild's, which differs only in when it was made.
    atomic_write_bytes(stage_dir(root, "dataset", key) / MANIFEST, raw)
    return recorded
