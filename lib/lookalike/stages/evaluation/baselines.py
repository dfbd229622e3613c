"""The baselines every evaluation measures beside the run's encoder, on the same queries, protocol and k.

- `pixels`: the images themselves, fitted to a square of at most `PIXEL_SIDE` pixels (the encoder's
  input size when smaller) and flattened. What any encoder must beat to have learned anything.
- `init`: the encoder as training found it (its seeded starting point, or the `encoder.init` it
  continued from: `starting_point`), embedded through the one inference path. What pretraining added.
- `teacher`: a distilled encoder's teacher (`method=distill`), always measured for one: the student's
  scores are reported as fractions of it (`distillation`), with both models' embedding speed.

Both search exactly (FAISS's brute force in the run index's metric, whitened like the run's index by the
same rule on their own vectors) over every indexed image, or over the evaluation's sample of them
(`evaluation.sample_size`: only those images are decoded and embedded), so a gain over them is the
encoder's, not the index type's or the whitening's. The run's own numbers come from its index,
restricted to the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch.utils.data import DataLoader

from lookalike.core.manifest import Manifest
from lookalike.core.progress import progress
from lookalike.stages.dataset.torch_data import SnapshotImages
from lookalike.stages.encoder.training import starting_point, teacher_model
from lookalike.stages.index.factory import prepare_vectors
from lookalike.stages.index.whitening import fit_whitening
from lookalike.stages.inference import Embedder

PIXEL_SIDE = 32
SPEED_SAMPLE = 512  # images each model embeds for the distillation's speed comparison
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
    loader = DataLoader(SnapshotImages.fitted(snapshot, side), batch_size=batch_size)
    out = np.empty((len(snapshot), side * side * 3), np.float32)  # filled in place: no second copy to concatenate
    done = 0
    with progress(len(snapshot), "evaluation: pixel baseline", unit="img") as bar:
        for batch in loader:  # (N, side, side, 3) uint8
            out[done : done + len(batch)] = batch.reshape(len(batch), -1).to(torch.float32).div_(255.0).numpy()
            done += len(batch)
            bar.update(len(batch))
    return out


def baselines(
    names: tuple[str, ...], encoder: Manifest, root: Path, channels_last: bool, batch_size: int
) -> list[Baseline]:
    """The baselines asked for (and a distilled encoder's teacher), ready to turn a snapshot into vectors."""
    spec = encoder.stats["spec"]
    out = []
    if encoder.settings.get("method") == "distill" and "teacher" not in names:
        names = (*names, "teacher")
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
            if settings.get("init"):
                describe = f"{settings['backbone']}{width} as its init {settings['init']} left it"

            def init_vectors(snapshot) -> np.ndarray:
                model, init_spec = starting_point(encoder, root)
                embedder = Embedder.from_model(model, init_spec, channels_last=channels_last)
                return embedder.embed_snapshot(snapshot, batch_size=batch_size, desc="evaluation: init baseline")

            out.append(Baseline(name, describe, init_vectors))
        elif name == "teacher":

            def teacher_vectors(snapshot) -> np.ndarray:
                model, teacher_spec = teacher_model(encoder, root)
                embedder = Embedder.from_model(model, teacher_spec, channels_last=channels_last)
                return embedder.embed_snapshot(snapshot, batch_size=batch_size, desc="evaluation: the teacher")

            out.append(Baseline(name, f"the teacher {encoder.settings.get('teacher')}", teacher_vectors))
        else:
            raise ValueError(f"unknown baseline {name!r}")
    return out


def images_per_second(embedder: Embedder, snapshot, n: int = SPEED_SAMPLE, batch_size: int = 256) -> float:
    """How fast `embedder` turns decoded images into vectors: the same first `n` rows for every model,
    decoded and fitted once beforehand, after one warm-up batch (this process, its threads)."""
    rows = snapshot.select(range(min(n, len(snapshot))))
    batches = list(embedder.loader(rows, batch_size=batch_size))
    if not batches:
        return 0.0
    embedder.embed_pixels(batches[0])
    started = time.perf_counter()
    for batch in batches:
        embedder.embed_pixels(batch)
    return round(sum(len(b) for b in batches) / (time.perf_counter() - started), 1)


def distillation_report(
    root: Path, encoder: Manifest, run: dict, teacher: dict, snapshot, channels_last: bool, k: int
) -> dict:
    """The student as a fraction of its teacher on the same queries, and how much faster it embeds."""
    names = [m.format(k=k) for m in BASELINE_METRICS]
    student = Embedder(root, encoder, channels_last=channels_last)
    model, spec = teacher_model(encoder, root)
    speed = {"student": images_per_second(student, snapshot)}
    speed["teacher"] = images_per_second(Embedder.from_model(model, spec, channels_last=channels_last), snapshot)
    return {
        "teacher": encoder.settings.get("teacher"),
        "fraction": {
            m: round(run[m] / teacher[m], 4) if run.get(m) is not None and teacher.get(m) else None for m in names
        },
        "images_per_second": speed,
        "speedup": round(speed["student"] / speed["teacher"], 2) if speed["teacher"] else None,
        "speed_images": min(SPEED_SAMPLE, len(snapshot)),
    }


def exact_neighbours(
    indexed: np.ndarray,
    row_ids: np.ndarray,
    queries: np.ndarray,
    metric: str,
    k: int,
    whitening: float = 0.0,
    overwrite: bool = False,
) -> np.ndarray:
    """Row ids of the k nearest indexed vectors of each query, by exact search in `metric`, after
    the run index's whitening learned from these indexed vectors (`fit_whitening`, same rule).
    `overwrite`: `indexed` (float32, C-contiguous) may be prepared and whitened where it is, instead of in a
    copy (the caller has no further use for it: at 50,000 images the pixels alone are 470 MB)."""
    fit = overwrite and indexed.dtype == np.float32 and indexed.flags.c_contiguous and indexed.flags.writeable
    base = indexed if fit else prepare_vectors(indexed, metric)
    if fit and metric == "ip":
        faiss.normalize_L2(base)
    whiten = fit_whitening(base, whitening)
    # where the prepared vectors are, a chunk at a time: each whole-array step would hold another copy
    base = whiten.apply_in_place(base) if whiten.dim == base.shape[1] else whiten.apply(base)
    if not len(base):
        return np.empty((len(queries), 0), np.int64)
    # FAISS's brute-force search over the array itself (what a flat index runs), without a flat index's copy of it
    _, found = faiss.knn(
        whiten.apply(prepare_vectors(queries, metric)),
        base,
        min(k, len(base)),
        metric=faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2,
    )
    return np.where(found >= 0, np.asarray(row_ids, dtype=np.int64)[np.maximum(found, 0)], -1)


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
