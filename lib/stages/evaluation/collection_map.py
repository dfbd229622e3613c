"""A map of the collection: its embeddings projected to 2-D, drawn as a picture and kept as points.

The projection is PCA (numpy SVD over the centred vectors): deterministic, seconds on 10k rows, and
needing nothing beyond numpy. It runs on the embeddings as the metric sees them before the index's
whitening (L2-normalised for `ip`): whitening gives every direction the same variance, so the two
largest components of whitened vectors show no more of the collection's structure than any other two.
t-SNE and UMAP are not dependencies here; the W&B table carries the first `COMPONENTS` components so
W&B's projector can run either on them in the browser.

At most `MAP_POINTS` rows are mapped (a seeded sample, the same rows for the same collection), so the
picture stays readable and the W&B table (one thumbnail per point) stays small.
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
MAP_POINTS = 2000  # rows mapped, at most
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


def write_map(
    folder: Path,
    vectors: np.ndarray,
    row_ids: np.ndarray,
    labels: list[str | None] | None,
    index_key: str,
    cache_dir: Path | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Project a seeded sample of at most MAP_POINTS `vectors` (embedding order, prepared for the
    metric, not whitened) and write MAP_POINTS_FILE (row ids, x, y, label, the first COMPONENTS
    components) and MAP_PICTURE into `folder`. Returns (stats, files written)."""
    picks = seeded_sample(len(row_ids), MAP_POINTS)
    components, share = principal_components(vectors[picks])
    while components.shape[1] < 2:  # a 1-d embedding or a single row: pad so x and y always exist
        components = np.concatenate([components, np.zeros((len(components), 1), np.float32)], axis=1)
    names = [labels[p] for p in picks] if labels else [None] * len(picks)
    record = {
        "projection": "pca",
        "index": index_key,
        "explained_variance": [round(float(s), 4) for s in share[:2]],
        "rows": [int(r) for r in row_ids[picks]],
        "x": [round(float(v), 5) for v in components[:, 0]],
        "y": [round(float(v), 5) for v in components[:, 1]],
        "labels": names,
        "components": [[round(float(v), 5) for v in row] for row in components[:, :COMPONENTS]],
    }
    atomic_write_bytes(folder / MAP_POINTS_FILE, json.dumps(record).encode())
    draw_map(folder / MAP_PICTURE, record, cache_dir)
    stats = {
        "projection": "pca",
        "n_points": len(picks),
        "n_rows": int(len(row_ids)),
        "explained_variance": record["explained_variance"],
    }
    return stats, [MAP_POINTS_FILE, MAP_PICTURE]


def draw_map(path: Path, record: dict[str, Any], cache_dir: Path | None = None) -> None:
    """The points as a scatter plot, one colour per label (a legend of up to MAX_LEGEND of them)."""
    if cache_dir is not None:
        os.environ.setdefault("MPLCONFIGDIR", str(cache_dir))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, labels = np.asarray(record["x"]), np.asarray(record["y"]), record["labels"]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
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
            ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    else:
        ax.scatter(x, y, s=6, alpha=0.6)
    share = record["explained_variance"] + [0.0, 0.0]
    ax.set_xlabel(f"PC 1 ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.0%} of the variance)")
    ax.set_title(f"PCA of {len(x)} embeddings, index {record['index']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def map_table(root: Path, evaluation: Manifest) -> tuple[list[str], list[list[Any]]] | None:
    """The mapped points as table rows for W&B's embedding projector: row id, label, thumbnail (a PIL
    image), x, y, then the first COMPONENTS principal components (`pc_1`, ...). None without a map."""
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.stages.dataset.images import decode_snapshot_image
    from lookalike.stages.dataset.stage import open_snapshot, row_positions

    if not any(f.path == MAP_POINTS_FILE for f in evaluation.files):
        return None
    record = json.loads(verified_path(root, evaluation, MAP_POINTS_FILE).read_bytes())
    snapshot = open_snapshot(root, read_manifest(root, "dataset", evaluation.inputs["dataset"]))
    at = row_positions(snapshot)
    width = max((len(c) for c in record["components"]), default=0)
    columns = ["row", "label", "image", "x", "y", *(f"pc_{i}" for i in range(1, width + 1))]
    rows = []
    for row, label, x, y, pcs in zip(record["rows"], record["labels"], record["x"], record["y"], record["components"]):
        image = decode_snapshot_image(snapshot[at[row]]["image"]["bytes"])
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        rows.append([row, label, image, x, y, *pcs])
    return columns, rows
