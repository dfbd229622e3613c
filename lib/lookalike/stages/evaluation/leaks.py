"""Leak-aware evaluation: which queries have a copy of themselves in the index.

A query whose image (or a near-copy of it) is indexed finds that copy first, so it scores the
retrieval of a copy, not of a similar image: the metrics over such queries say more about the
collection than about the encoder. A query leaks when

- exact: its sha256 equals an indexed image's (held-out), or another indexed row's (leave-one-out:
  its own row never counts, it is dropped from its results already);
- near: it is not exact, and its nearest indexed neighbour (leave-one-out: other than itself) is
  within the near-duplicate threshold, calibrated on augmented copies of the collection
  (`lookalike.stages.duplicates.calibrate_threshold`, shared with the duplicates report).

The evaluation scores the clean queries (those that do not leak) with the same scoring function and
reports both sets of numbers; the promotion gate compares on the clean ones when any leaked.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from lookalike.stages.duplicates import within


def leaking_queries(
    query_sha256: list[str],
    query_ids: np.ndarray,
    distances: np.ndarray,
    ids: np.ndarray,
    indexed_sha256: dict[int, str],
    threshold: float | None,
    metric: str,
    leave_one_out: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(exact, near): boolean masks over the queries, never both true for one query.

    Args:
        query_sha256: each query's content hash.
        query_ids: each query's row id (its own indexed row, leave-one-out).
        distances, ids: each query's search results in the index (the own row among them, leave-one-out).
        indexed_sha256: row id -> content hash of every indexed row.
        threshold: the near-duplicate threshold in the index's units; None checks exact copies only.
    """
    counts = Counter(indexed_sha256.values())
    own_copies = 1 if leave_one_out else 0  # leave-one-out: the query's own row holds its hash once
    exact = np.array([counts.get(d, 0) > own_copies for d in query_sha256], dtype=bool)
    near = np.zeros(len(query_sha256), dtype=bool)
    if threshold is not None:
        for i, (qid, dist, found) in enumerate(zip(query_ids, distances, ids)):
            others = [d for d, r in zip(dist, found) if r >= 0 and not (leave_one_out and int(r) == int(qid))]
            near[i] = bool(others) and bool(within(np.asarray(others[:1]), threshold, metric)[0])
    return exact, near & ~exact


def leak_stats(exact: np.ndarray, near: np.ndarray, threshold: float | None, why: str) -> dict[str, Any]:
    """`stats["leaks"]`: how many queries leaked, how, and the near threshold with its reason."""
    return {
        "n_leaked": int(exact.sum() + near.sum()),
        "exact": int(exact.sum()),
        "near": int(near.sum()),
        "threshold": threshold,
        "why": why,
    }
