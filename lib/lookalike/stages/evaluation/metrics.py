"""Retrieval scores from labels: kNN@k accuracy, precision@k, mAP@k and per-class kNN accuracy.

kNN@k accuracy is the fraction of queries whose neighbours' majority label (ties to the
nearest) is right; precision@k the mean fraction of same-label neighbours; mAP@k the mean
over queries of AP@k = sum_i P@i * rel_i / min(k, R), R being how many indexed images
share the query's label (not counting the query itself, leave-one-out). Labels are
compared by name, so two splits whose label lists differ still score correctly.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def label_metrics(
    ids: np.ndarray, query_ids: np.ndarray, labels: np.ndarray, position: dict[int, int], k: int, names: list[str]
) -> dict:
    """Leave-one-out scores: the queries are indexed rows `query_ids`, `ids` their search
    results (k + 1 wide, the query's own row among them); `labels[position[row]]` indexes `names`."""
    label_of = {row: names[labels[i]] for row, i in position.items()}
    return scores(ids, query_ids, [label_of[int(q)] for q in query_ids], label_of, k, leave_one_out=True)


def held_out_metrics(ids: np.ndarray, query_labels: list[str | None], label_of: dict[int, str | None], k: int) -> dict:
    """Held-out scores: `ids` are the k nearest indexed rows of each query, none of them the
    query itself (its row id may still equal an indexed one: the numbering is per split)."""
    return scores(ids, np.full(len(ids), -1), query_labels, label_of, k, leave_one_out=False)


def scores(
    ids: np.ndarray,
    query_ids: np.ndarray,
    truths: list[str | None],
    label_of: dict[int, str | None],
    k: int,
    leave_one_out: bool,
) -> dict:
    """kNN accuracy, precision@k, mAP@k and per-class kNN accuracy; unlabelled queries are skipped."""
    counts = Counter(label_of.values())
    correct, precision, average_precision = [], [], []
    per_class: dict[str, list[bool]] = {}
    for qid, truth, found in zip(query_ids, truths, ids):
        if truth is None:
            continue
        own = int(qid) if leave_one_out else None
        neighbours = [label_of.get(int(r)) for r in found if r >= 0 and int(r) != own][:k]
        if not neighbours:
            continue
        votes = Counter(neighbours)
        best = max(votes.values())
        predicted = next(lab for lab in neighbours if votes[lab] == best)  # ties go to the nearest
        correct.append(predicted == truth)
        precision.append(sum(lab == truth for lab in neighbours) / len(neighbours))
        relevant = counts[truth] - (1 if leave_one_out else 0)
        average_precision.append(_average_precision([lab == truth for lab in neighbours], relevant, k))
        per_class.setdefault(truth, []).append(predicted == truth)
    if not correct:
        return {"knn_accuracy": None, f"precision_at_{k}": None, f"map_at_{k}": None, "per_class": None}
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
