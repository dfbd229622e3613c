"""The baselines every evaluation measures beside the run's encoder, on the same queries, protocol and k.

- `pixels`: the images themselves, fitted to a square of at most `PIXEL_SIDE` pixels (the encoder's
  input size when smaller) and flattened. What any encoder must beat to have learned anything.
- `init`: the encoder as training found it (its seeded starting point, `starting_point`), embedded
  through the one inference path. What pretraining added.

Both search exactly (a flat index in the run index's metric, whitened like the run's index by the
same rule on their own vectors) over every indexed image, so a gain over them is the encoder's, not
the index type's or the whitening's. The run's own numbers come from its index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from lookalike.core.manifest import Manifest
from lookalike.core.progress import progress
from lookalike.stages.dataset.torch_data import ResizeToTensor, SnapshotImages
from lookalike.stages.encoder.training import starting_point
from lookalike.stages.index.factory import prepare_vectors, search
from lookalike.stages.index.whitening import fit_whitening
from lookalike.stages.inference import Embedder

PIXEL_SIDE = 32
BASELINE_METRICS = ("knn_accuracy", "precision_at_{k}", "map_at_{k}")

# vectors(snapshot) -> (n, dim) float32 in snapshot row order
Vectorizer = Callable[[object], np.ndarray]


@dataclass(frozen=True)
class Baseline:
    name: str
    describe: str  # what it is, for reports: "pixels 28x28", "resnet-9 x0.25 at its random init"
    vectors: Vectorizer


def pixel_side(input_size: int) -> int:
    return min(PIXEL_SIDE, input_size)


def pixel_vectors(snapshot, side: int, batch_size: int = 512) -> np.ndarray:
    """(n, side*side*3) float32 in [0, 1]: every image of the snapshot fitted to side x side, flattened."""
    loader = DataLoader(SnapshotImages(snapshot, ResizeToTensor(side)), batch_size=batch_size)
    out = []
    with progress(len(snapshot), "evaluation: pixel baseline", unit="img") as bar:
        for batch in loader:  # (N, side, side, 3) uint8
            out.append(batch.reshape(len(batch), -1).to(torch.float32).div_(255.0).numpy())
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, side * side * 3), np.float32)


def baselines(names: tuple[str, ...], encoder: Manifest, channels_last: bool, batch_size: int) -> list[Baseline]:
    """The baselines asked for, ready to turn a snapshot into vectors."""
    spec = encoder.stats["spec"]
    out = []
    for name in names:
        if name == "pixels":
            side = pixel_side(spec["input_size"])
            out.append(
                Baseline(name, f"pixels {side}x{side}", lambda snapshot, side=side: pixel_vectors(snapshot, side))
            )
        elif name == "init":
            settings = encoder.settings
            width = f" x{settings['width']:g}" if settings.get("width", 1.0) != 1.0 else ""
            describe = f"{settings['backbone']}{width} at its starting point (seed {settings.get('seed', 0)})"

            def init_vectors(snapshot) -> np.ndarray:
                model, init_spec = starting_point(encoder)
                embedder = Embedder.from_model(model, init_spec, channels_last=channels_last)
                return embedder.embed_snapshot(snapshot, batch_size=batch_size, desc="evaluation: init baseline")

            out.append(Baseline(name, describe, init_vectors))
        else:
            raise ValueError(f"unknown baseline {name!r}")
    return out


def exact_neighbours(
    indexed: np.ndarray, row_ids: np.ndarray, queries: np.ndarray, metric: str, k: int, whitening: float = 0.0
) -> np.ndarray:
    """Row ids of the k nearest indexed vectors of each query, by exact search in `metric`, after
    the run index's whitening learned from these indexed vectors (`fit_whitening`, same rule)."""
    base = prepare_vectors(indexed, metric)
    whiten = fit_whitening(base, whitening)
    base = whiten.apply(base)
    index = faiss.IndexIDMap2(
        faiss.IndexFlat(base.shape[1], faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    )
    index.add_with_ids(base, row_ids.astype(np.int64))
    return search(index, whiten.apply(prepare_vectors(queries, metric)), k)[1]


def gains(run: dict, measured: dict[str, dict], k: int) -> dict[str, dict[str, float | None]]:
    """How far the run is above each baseline on each score (negative: below it)."""
    names = [m.format(k=k) for m in BASELINE_METRICS]
    return {
        baseline: {
            m: round(run[m] - scores[m], 6) if run.get(m) is not None and scores.get(m) is not None else None
            for m in names
        }
        for baseline, scores in measured.items()
    }
