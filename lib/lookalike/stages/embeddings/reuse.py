"""Incremental add: vectors an earlier embeddings stage stored for the same image bytes, taken
instead of recomputed.

Images are matched by the content sha256 their dataset snapshot records, so a grown, shrunk or
renamed collection sends only images it has never seen through the encoder. A candidate stage
must share the encoder, the code version and the key settings; every file it lends is verified
against its manifest first, and anything that does not verify is embedded again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lookalike.core.graph import STAGES
from lookalike.core.manifest import MANIFEST, IntegrityError, Manifest, find_manifest, verified_path
from lookalike.core.settings import EmbeddingsSettings
from lookalike.stages.dataset.stage import STAGE as DATASET
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.embeddings.shards import ROW_IDS, STAGE, shard_name


class KnownVectors:
    """Stored vectors for the content sha256s a stage has to fill, gathered from earlier stages."""

    def __init__(self, dim: int, wanted: Iterable[str] = ()) -> None:
        self.dim = dim
        self.slots = {sha: i for i, sha in enumerate(dict.fromkeys(wanted))}
        self.found = np.zeros(len(self.slots), dtype=bool)
        self.vectors: np.ndarray | None = None  # allocated when the first vector is found
        self.sources: list[str] = []
        self.rejected: list[dict[str, str]] = []

    def has(self, sha: str) -> bool:
        slot = self.slots.get(sha)
        return slot is not None and bool(self.found[slot])

    def open_slot(self, sha: str | None) -> int | None:
        """The slot of a wanted hash that has no vector yet, else None."""
        slot = self.slots.get(sha)
        return None if slot is None or self.found[slot] else slot

    def complete(self) -> bool:
        return bool(self.found.all())

    def store(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        if self.vectors is None:
            self.vectors = np.empty((len(self.slots), self.dim), np.float32)
        self.vectors[slots] = vectors
        self.found[slots] = True

    def take(self, shas: list[str]) -> np.ndarray:
        return self.vectors[[self.slots[sha] for sha in shas]]

    def reject(self, key: str, reason: str) -> None:
        self.rejected.append({"key": key, "reason": reason})


def reuse_candidates(section: EmbeddingsSettings, encoder: Manifest, root: Path) -> list[Manifest]:
    """Finished embeddings stages whose vectors this one may take over, newest first.

    Same encoder, code version and key settings: a vector stored there is what embedding
    the same image bytes gives here (up to float rounding of batch and device). The stage
    being built has no manifest yet, so it is never its own candidate.
    """
    settings = section.key_fields()
    found = []
    for path in (Path(root) / STAGE).glob(f"*/{MANIFEST}"):
        try:
            manifest = find_manifest(root, STAGE, path.parent.name)
        except IntegrityError:  # a damaged earlier stage is no candidate; it does not stop this one
            continue
        if (
            manifest is not None
            and manifest.stage == STAGE
            and manifest.code_version == STAGES[STAGE].code_version
            and manifest.inputs.get("encoder") == encoder.key
            and {k: manifest.settings.get(k) for k in settings} == settings
        ):
            found.append(manifest)
    return sorted(found, key=lambda m: (m.created, m.key), reverse=True)


def find_known_vectors(root: Path, candidates: list[Manifest], wanted: Iterable[str], dim: int) -> KnownVectors:
    """Stored vectors for the `wanted` content hashes, taken from `candidates` in order.

    Stops once every hash has a vector, so an older stage is read only for images the
    newer ones lack. A candidate whose dataset snapshot is gone or does not verify gives
    nothing; a shard that does not verify gives nothing either (its images are embedded).
    """
    known = KnownVectors(dim, wanted)
    for candidate in candidates:
        if known.complete():
            break
        try:
            taken = _take_vectors(root, candidate, known)
        except (IntegrityError, OSError) as exc:  # snapshot or row ids tampered, or deleted under us
            known.reject(candidate.key, str(exc))
            continue
        if taken:
            known.sources.append(candidate.key)
    return known


def _take_vectors(root: Path, candidate: Manifest, known: KnownVectors) -> int:
    """Copy into `known` the vectors it still lacks that `candidate` holds; how many it took."""
    dataset = find_manifest(root, DATASET, candidate.inputs.get("dataset", ""))
    if dataset is None:
        known.reject(candidate.key, f"its dataset snapshot {candidate.inputs.get('dataset')} is gone")
        return 0
    snapshot = open_snapshot(root, dataset)
    sha_of_row = dict(zip(snapshot.data.column("row_id").to_pylist(), snapshot.data.column("sha256").to_pylist()))
    row_ids = np.load(verified_path(root, candidate, ROW_IDS)).tolist()
    pairs = ((position, known.open_slot(sha_of_row.get(row))) for position, row in enumerate(row_ids))
    matched = np.asarray([pair for pair in pairs if pair[1] is not None], dtype=np.int64).reshape(-1, 2)
    positions, slots = matched[:, 0], matched[:, 1]
    size = candidate.settings["shard_size"]
    taken = 0
    for shard in np.unique(positions // size).tolist():
        here = positions // size == shard
        name = shard_name(shard)
        try:
            vectors = np.load(verified_path(root, candidate, name))
        except (IntegrityError, OSError, ValueError) as exc:  # ValueError: not a plain .npy array
            known.reject(candidate.key, f"{name}: {exc}")
            continue
        expected = (min(len(row_ids), (shard + 1) * size) - shard * size, known.dim)
        if vectors.shape != expected:
            known.reject(candidate.key, f"{name} holds vectors of shape {vectors.shape}, expected {expected}")
            continue
        known.store(slots[here], vectors[positions[here] - shard * size])
        taken += int(here.sum())
    return taken
