"""The embeddings stage folder's layout: one `.npy` shard per `shard_size` rows, in snapshot row
order, beside `row_ids.npy`; and reading it back, every file verified against the manifest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lookalike.core.manifest import Manifest, verified_path

STAGE = "embeddings"
ROW_IDS = "row_ids.npy"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def load_embeddings(root: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, dim), row ids int64 (n,)) after verifying every file."""
    row_ids = np.load(verified_path(root, manifest, ROW_IDS))
    shards = [np.load(verified_path(root, manifest, shard_name(i))) for i in range(manifest.stats["n_shards"])]
    vectors = np.concatenate(shards) if shards else np.zeros((0, manifest.stats["dim"]), np.float32)
    return vectors, row_ids


def embedding_row_ids(root: Path, manifest: Manifest) -> np.ndarray:
    """The row ids (int64, shard order) alone, verified: what a sample is drawn from before any vector is read."""
    return np.load(verified_path(root, manifest, ROW_IDS))


def iter_embeddings(root: Path, manifest: Manifest) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, row ids) one shard at a time, each verified as it is read: the whole collection in
    the memory of one shard."""
    row_ids = embedding_row_ids(root, manifest)
    start = 0
    for i in range(manifest.stats["n_shards"]):
        shard = np.load(verified_path(root, manifest, shard_name(i)))
        yield shard, row_ids[start : start + len(shard)]
        start += len(shard)


def load_embedding_rows(root: Path, manifest: Manifest, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`load_embeddings` of the rows at `positions` (sorted, in shard order) only, read shard by shard,
    so a sample of a large collection never holds the rest of it."""
    positions = np.asarray(positions, dtype=np.int64)
    vectors, ids = [], []
    start = 0
    for shard, shard_ids in iter_embeddings(root, manifest):
        wanted = positions[(positions >= start) & (positions < start + len(shard))] - start
        vectors.append(shard[wanted])
        ids.append(shard_ids[wanted])
        start += len(shard)
    if not vectors:
        return np.zeros((0, manifest.stats["dim"]), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vectors), np.concatenate(ids)
