"""The `evaluation` stage: retrieval quality on labelled data, and the retrieval grid.

Leave-one-out over the indexed images: each (sampled) image queries the index, its own
row is dropped from the results, and the next k neighbours vote. kNN@k accuracy is
the fraction whose majority label (ties to the nearest) is right; precision@k the
mean fraction of same-label neighbours; mAP@k the mean over queries of
AP@k = sum_i P@i * rel_i / min(k, R), R being how many other images share the label.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lib.config import EvaluationSettings
from lib.data.images import decode_rgb
from lib.data.snapshot import open_snapshot, row_positions
from lib.embedding import load_embeddings
from lib.indexing import load_index, prepare_vectors, sample_queries, search
from lib.manifest import Manifest, stage_key
from lib.pictures import retrieval_grid, save_image
from lib.stages import Built, StageResult, run_stage

STAGE = "evaluation"
CODE_VERSION = 2
GRID = "retrieval-grid.png"


def evaluation_key(section: EvaluationSettings, dataset: Manifest, index: Manifest) -> str:
    return stage_key(STAGE, section.key_fields(), {"dataset": dataset.key, "index": index.key}, CODE_VERSION)


def run_evaluation_stage(
    section: EvaluationSettings, dataset: Manifest, embeddings: Manifest, index: Manifest, root: Path
) -> StageResult:
    key = evaluation_key(section, dataset, index)

    def build(folder: Path) -> Built:
        return _evaluate(section, dataset, embeddings, index, root, folder)

    return run_stage(
        root, STAGE, key, code_version=CODE_VERSION, settings=section.model_dump(mode="json"),
        inputs={"dataset": dataset.key, "index": index.key}, build=build,
    )


def _evaluate(section, dataset: Manifest, embeddings: Manifest, index_manifest: Manifest, root: Path, folder: Path) -> Built:
    snapshot = open_snapshot(root, dataset)
    index = load_index(root, index_manifest)
    raw, row_ids = load_embeddings(root, embeddings)
    vectors = prepare_vectors(raw, index_manifest.stats["metric"])
    names = dataset.stats.get("label_names")
    labels = np.asarray(snapshot["label"]) if names else None
    position = row_positions(snapshot)

    n = len(vectors)
    queries = sample_queries(n)
    stats: dict = {"n_queries": int(len(queries)), "k": section.k, "protocol": "leave-one-out"}
    if labels is not None and n > 1:
        _, ids = search(index, vectors[queries], section.k + 1)
        stats.update(label_metrics(ids, row_ids[queries], labels, position, section.k, names))
    else:
        stats.update({"knn_accuracy": None, f"precision_at_{section.k}": None, f"map_at_{section.k}": None,
                      "per_class": None})

    files = []
    if section.grid_queries:
        grid = _grid(section, snapshot, index, vectors, row_ids, position, names)
        save_image(folder / GRID, grid)
        files.append(GRID)
    return Built(files=files, stats=stats)


def label_metrics(ids: np.ndarray, query_ids: np.ndarray, labels: np.ndarray, position: dict[int, int], k: int, names: list[str]) -> dict:
    """kNN accuracy, precision@k, mAP@k and per-class kNN accuracy from leave-one-out results."""
    correct, precision, average_precision, per_class = [], [], [], {}
    counts = Counter(int(v) for v in labels)
    for qid, found in zip(query_ids, ids):
        truth = labels[position[int(qid)]]
        neighbours = [labels[position[int(r)]] for r in found if r != qid and r >= 0][:k]
        if not neighbours:
            continue
        votes = Counter(neighbours)
        best = max(votes.values())
        predicted = next(lab for lab in neighbours if votes[lab] == best)  # ties go to the nearest
        correct.append(predicted == truth)
        precision.append(sum(lab == truth for lab in neighbours) / len(neighbours))
        average_precision.append(_average_precision([lab == truth for lab in neighbours], counts[int(truth)] - 1, k))
        per_class.setdefault(names[truth], []).append(predicted == truth)
    return {
        "knn_accuracy": round(float(np.mean(correct)), 6),
        f"precision_at_{k}": round(float(np.mean(precision)), 6),
        f"map_at_{k}": round(float(np.mean(average_precision)), 6),
        "per_class": {name: round(float(np.mean(v)), 4) for name, v in sorted(per_class.items())},
    }


def _average_precision(relevant: list[bool], n_relevant: int, k: int) -> float:
    """AP@k of one ranked list: the precision at each relevant hit, over min(k, R)."""
    if n_relevant <= 0:
        return 0.0
    hits, total = 0, 0.0
    for rank, rel in enumerate(relevant[:k], start=1):
        if rel:
            hits += 1
            total += hits / rank
    return total / min(k, n_relevant)


def _grid(section, snapshot, index, vectors, row_ids, position, names):
    rng = np.random.default_rng(0)
    picks = np.sort(rng.choice(len(vectors), size=min(section.grid_queries, len(vectors)), replace=False))
    distances, found = search(index, vectors[picks], section.grid_neighbours)
    rows = []
    for p, dist, ids in zip(picks, distances, found):
        query = snapshot[int(p)]
        neighbours = []
        for d, r in zip(dist, ids):
            if r < 0:
                continue
            item = snapshot[position[int(r)]]
            neighbours.append((_image(item), f"row {int(r)} d={d:.3f}\n{_label(item, names)}"))
        rows.append((_image(query), f"query row {int(row_ids[p])}\n{_label(query, names)}", neighbours))
    return retrieval_grid(rows)


def _image(item):
    return decode_rgb(item["image"]["bytes"], 1 << 62)


def _label(item, names) -> str:
    return names[item["label"]] if names and "label" in item else ""
