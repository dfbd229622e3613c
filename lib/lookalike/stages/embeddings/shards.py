"""The embeddings stage folder's layout: one `.npy` shard per `shard_size` rows, in snapshot row
order, beside `row_ids.npy`; and reading it back, every file verified against the manifest."""

from __future__ import annotations

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
