"""A map of the collection: its embeddings projected to 2-D, drawn as a picture and kept as points.

The projection is t-SNE (exact, numpy, `tsne` below), seeded from the first two principal components,
on the embeddings as the metric compares them (L2-normalised for `ip`). Why not PCA alone: on
Fashion-MNIST's 10k test images (the resnet-9 x0.25 SimCLR encoder of benchmarks/, the 1,000 mapped
points) a point's 10 nearest points in the map vote its label for 0.27 of points with PCA, 0.61 with
this t-SNE and 0.65 in the full embedding: PCA's two widest directions do not separate the classes,
t-SNE keeps each image's neighbours beside it. scikit-learn, openTSNE and UMAP are not dependencies;
exact t-SNE costs O(n^2) per iteration, so at most `MAP_POINTS` rows are mapped (a seeded sample, the
same rows for the same collection): 1.0 s for 1,000 points, 1.2-1.6 s for the whole map of 10k
(picture included), 0.1 s for 48 (2 shared CPU cores). The W&B table also carries the first
`COMPONENTS` principal components, so W&B's projector can run its own PCA, t-SNE or UMAP in the browser.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.core.manifest import Manifest, atomic_path, atomic_write_bytes, verified_path
from lookalike.stages.sampling import seeded_sample

MAP_PICTURE = "map.png"
MAP_POINTS_FILE = "map.json"
MAP_POINTS = 1000  # rows mapped, at most (t-SNE is O(n^2) per iteration)
PERPLEXITY = 30.0
ITERATIONS = 300  # the first EXAGGERATED of them with the attractions x EXAGGERATION, as in van der Maaten's
EXAGGERATED, EXAGGERATION = 100, 12.0
COMPONENTS = 16  # principal components kept per point for W&B's projector
MAX_LEGEND = 20  # labels named in the legend; more than that are coloured but not listed
THUMBNAIL = 64


def principal_components(vectors: np.ndarray, n: int = COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """(the first `n` principal-component coordinates (rows, min(n, dim, rows)), the share of the
    variance each explains). Signs are fixed so each component's largest loading is positive:
    the same vectors always give the same picture."""
    centred = np.asarray(vectors, dtype=np.float64) - np.mean(vectors, axis=0)
    if len(centred) < 2:
        return np.zeros((len(centred), min(n, centred.shape[1])), np.float32), np.zeros(0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    basis = basis[:n]
    basis *= np.sign(basis[np.arange(len(basis)), np.abs(basis).argmax(1)])[:, None]
    variance = singular**2
    share = variance[: len(basis)] / variance.sum() if variance.sum() > 0 else np.zeros(len(basis))
    return (centred @ basis.T).astype(np.float32), share


def tsne(vectors: np.ndarray, perplexity: float = PERPLEXITY, iterations: int = ITERATIONS) -> np.ndarray:
    """(n, 2) t-SNE coordinates of `vectors`, deterministic: affinities from each point's 3 x perplexity
    nearest neighbours (exact FAISS search), started from the first two principal components scaled to
    a standard deviation of 1e-4, gradient descent with momentum and per-coordinate gains."""
    import faiss

    n = len(vectors)
    if n < 3:
        return principal_components(vectors, 2)[0] if n else np.zeros((0, 2), np.float32)
    perplexity = min(perplexity, (n - 1) / 3)
    k = min(n - 1, max(1, int(3 * perplexity)))
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    search = faiss.IndexFlatL2(x.shape[1])
    search.add(x)
    distances, neighbours = search.search(x, k + 1)
    distances, neighbours = distances[:, 1:].astype(np.float64), neighbours[:, 1:]
    distances -= distances[:, :1]  # relative to the nearest: exp() stays in range, the row's P is unchanged
    low, high, beta = np.full(n, 1e-20), np.full(n, np.inf), np.ones(n)
    for _ in range(50):  # each row's precision, by bisection, so its entropy is log(perplexity)
        p = np.exp(-distances * beta[:, None])
        total = p.sum(1)
        entropy = np.log(total) + beta * (distances * p).sum(1) / total
        wide = entropy > np.log(perplexity)
        low, high = np.where(wide, beta, low), np.where(wide, high, beta)
        beta = np.where(np.isinf(high), beta * 2, (low + high) / 2)
    affinity = np.zeros((n, n), np.float32)
    affinity[np.repeat(np.arange(n), k), neighbours.ravel()] = (p / p.sum(1, keepdims=True)).ravel()
    affinity = np.maximum((affinity + affinity.T) / (2 * n), 1e-12).astype(np.float32)
    y = principal_components(x, 2)[0]
    if y.shape[1] < 2 or not y[:, 0].std():
        y = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
    y = (y / y[:, 0].std() * 1e-4).astype(np.float32)
    step, gains = np.zeros_like(y), np.ones_like(y)
    rate = max(n / EXAGGERATION, 50.0)
    for i in range(iterations):
        exaggerate = EXAGGERATION if i < EXAGGERATED else 1.0
        squared = (y * y).sum(1)
        kernel = y @ y.T  # (n, n), in place from here on: the loop is O(n^2) and memory-bound
        kernel *= -2.0
        kernel += squared[:, None]
        kernel += squared[None, :]
        kernel += 1.0
        np.reciprocal(kernel, out=kernel)  # the Student-t kernel 1 / (1 + |yi - yj|^2)
        np.fill_diagonal(kernel, 0.0)
        weights = kernel * np.float32(-1.0 / kernel.sum())  # -Q
        weights += affinity if exaggerate == 1.0 else exaggerate * affinity
        weights *= kernel
        gradient = 4 * (weights.sum(1)[:, None] * y - weights @ y)
        gains = np.where(np.sign(gradient) != np.sign(step), gains + 0.2, gains * 0.8).clip(0.01)
        step = (0.5 if i < EXAGGERATED else 0.8) * step - rate * gains * gradient
        y = y + step
    return (y - y.mean(0)).astype(np.float32)


def write_map(
    folder: Path,
    vectors: np.ndarray,
    row_ids: np.ndarray,
    labels: list[str | None] | None,
    index_key: str,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Project a seeded sample of at most MAP_POINTS `vectors` (embedding order, prepared for the
    metric, not whitened) by `tsne` and write MAP_POINTS_FILE (row ids, x, y, label, the first COMPONENTS
    principal components) and MAP_PICTURE into `folder`. Returns (stats, files written)."""
    picks = seeded_sample(len(row_ids), MAP_POINTS)
    components, _ = principal_components(vectors[picks])
    xy = tsne(vectors[picks])
    while xy.shape[1] < 2:  # a 1-d embedding: pad so x and y always exist
        xy = np.concatenate([xy, np.zeros((len(xy), 1), np.float32)], axis=1)
    names = [labels[p] for p in picks] if labels else [None] * len(picks)
    record = {
        "projection": f"t-SNE, perplexity {min(PERPLEXITY, (len(picks) - 1) / 3):.3g}, {ITERATIONS} iterations",
        "index": index_key,
        "rows": [int(r) for r in row_ids[picks]],
        "x": [round(float(v), 5) for v in xy[:, 0]],
        "y": [round(float(v), 5) for v in xy[:, 1]],
        "labels": names,
        "components": [[round(float(v), 5) for v in row] for row in components[:, :COMPONENTS]],
    }
    atomic_write_bytes(folder / MAP_POINTS_FILE, json.dumps(record).encode())
    draw_map(folder / MAP_PICTURE, record, cache_dir)
    stats = {"projection": record["projection"], "n_points": len(picks), "n_rows": int(len(row_ids))}
    return stats, [MAP_POINTS_FILE, MAP_PICTURE]


def draw_map(path: Path, record: dict[str, Any], cache_dir: Path | None = None) -> None:
    """The points as a scatter plot, one colour per label (a legend of up to MAX_LEGEND of them)."""
    if cache_dir is not None:
        os.environ.setdefault("MPLCONFIGDIR", str(cache_dir))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, labels = np.asarray(record["x"]), np.asarray(record["y"]), record["labels"]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    named = sorted({str(v) for v in labels if v is not None})
    if named:
        colours = plt.get_cmap("tab20" if len(named) > 10 else "tab10")
        for i, name in enumerate(named):
            at = np.array([v is not None and str(v) == name for v in labels])
            ax.scatter(x[at], y[at], s=6, alpha=0.7, color=colours(i % colours.N), label=name)
        unlabelled = np.array([v is None for v in labels])
        if unlabelled.any():
            ax.scatter(x[unlabelled], y[unlabelled], s=6, alpha=0.5, color="0.6", label="(no label)")
        if len(named) <= MAX_LEGEND:
            ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    else:
        ax.scatter(x, y, s=6, alpha=0.6)
    ax.set_xticks([])  # t-SNE's axes have no units: only who sits near whom means something
    ax.set_yticks([])
    ax.set_title(f"{record['projection']}: {len(x)} embeddings, index {record['index']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def map_table(root: Path, evaluation: Manifest) -> tuple[list[str], list[list[Any]]] | None:
    """The mapped points as table rows for W&B's embedding projector: row id, label, thumbnail (a PIL
    image), x, y, then the first COMPONENTS principal components (`pc_1`, ...). None without a map."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.stages.dataset.images import decode_snapshot_image
    from lookalike.stages.dataset.stage import open_snapshot, positions_of

    if not any(f.path == MAP_POINTS_FILE for f in evaluation.files):
        return None
    record = json.loads(verified_path(root, evaluation, MAP_POINTS_FILE).read_bytes())
    snapshot = open_snapshot(root, read_manifest(root, "dataset", evaluation.inputs["dataset"]))
    at = dict(zip(record["rows"], positions_of(snapshot, record["rows"]).tolist()))
    width = max((len(c) for c in record["components"]), default=0)
    columns = ["row", "label", "image", "x", "y", *(f"pc_{i}" for i in range(1, width + 1))]
    rows = []
    for row, label, x, y, pcs in zip(record["rows"], record["labels"], record["x"], record["y"], record["components"]):
        image = decode_snapshot_image(snapshot[at[row]]["image"]["bytes"])
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        rows.append([row, label, image, x, y, *pcs])
    return columns, rows
