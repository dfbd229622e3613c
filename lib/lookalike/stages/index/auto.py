"""`index.type=auto`: the fastest index that fits a memory budget and reaches a recall target.

Candidates are tried fastest first, in the order `benchmarks/index_presets.py` measured
their search speed (exact search first for small collections, where it is fast anyway).
A candidate whose estimated size exceeds the budget is skipped without being built; the
estimates are FAISS's own layout (codes + ids + centroids + codebooks), within 1% of the
serialized size. Each remaining candidate is trained and filled on all vectors but a
seeded held-out sample, and its recall@10 against exact search is measured for those
held-out queries, raising its search knobs (nprobe, efSearch, the refine k_factor) up to
4x until the target is met. The held-out vectors are then added, so the chosen index holds every vector.

The first candidate that fits and reaches the target wins. When none reaches it, the one
with the best measured recall among those that fit is kept and the report says so; when
none fits at all, the build fails naming the smallest candidate's size. Every candidate,
tried or skipped, is recorded with why.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from lookalike.core.settings import IndexSettings
from lookalike.stages.index.factory import (
    PRESETS,
    RECALL_K,
    IndexBuildError,
    IndexType,
    apply_search_params,
    choose_nlist,
    choose_pq,
    plan_factory,
    search,
    search_params_for,
    trained_index,
)
from lookalike.stages.sampling import seeded_sample

EXACT_BELOW = 10_000  # exact search over this many vectors takes a few ms per query: no need to approximate
HOLDOUT_MAX = 2_000
HOLDOUT_FRACTION = 0.1
ESCALATION = (1, 2, 4)  # search knob multipliers tried before a candidate is given up
MARGIN = 0.005  # recall a knob must add to be worth its search time when the target is out of reach
HNSW_M = 32


@dataclass(frozen=True)
class Candidate:
    preset: str
    kind: IndexType  # concrete factory
    estimated_bytes: int


@dataclass
class Choice:
    kind: IndexType
    index: faiss.Index
    search_params: dict[str, int]
    report: dict[str, Any]


def candidates(
    n: int, dim: int, nlist: int | None = None, n_train: int | None = None
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """(candidates fastest first, candidates that cannot be built for N with why); lists and
    codebooks are sized for the `n_train` vectors they are trained on (default N)."""
    ids = 8  # int64 id per vector, in the IVF lists or in the IndexIDMap2
    order: list[tuple[str, dict]] = [("flat-l2", {})] if n <= EXACT_BELOW else []
    order += [
        ("ivf-pqfs-rflat", {}),
        ("ivf-sq8", {}),
        ("hnsw", {}),
        ("ivf-flat", {}),
        ("ivf-pq", {"dims_per_code": 4}),
        ("ivf-pq", {"dims_per_code": 8}),
        ("ivf-pq", {"dims_per_code": 16}),
    ]
    if n > EXACT_BELOW:
        order.append(("flat-l2", {}))  # exact: always reaches the target, when it fits
    out, unusable, seen = [], [], set()
    for preset, extra in order:
        try:
            kind, per_vector, fixed = _plan(preset, n_train or n, dim, nlist, **extra)
        except IndexBuildError as exc:
            unusable.append({"preset": preset, "verdict": f"not buildable: {exc}"})
            continue
        if kind.factory in seen:  # small dims give the same PQ for several code sizes
            continue
        seen.add(kind.factory)
        out.append(Candidate(preset, kind, int(n * (per_vector + ids) + fixed)))
    return out, unusable


def _plan(preset: str, n: int, dim: int, nlist: int | None, dims_per_code: int = 4) -> tuple[IndexType, float, int]:
    """(concrete type, bytes per vector without its id, fixed bytes) for one candidate."""
    if preset in ("flat-l2", "hnsw"):
        kind = plan_factory(PRESETS[preset], n, dim)
        links = 2 * HNSW_M * 4 + 20 if preset == "hnsw" else 0  # level-0 links, levels and offsets
        return kind, 4 * dim + links, 0
    lists = nlist or choose_nlist(n, preset)
    centroids = lists * (dim * 4 + 8) + 256  # + list sizes and headers
    if preset == "ivf-pq":
        m, nbits = choose_pq(n, dim, dims_per_code)
        kind = IndexType(f"IVF{lists},PQ{m}x{nbits}np", "l2", exact=False)
        return kind, math.ceil(m * nbits / 8), centroids + (1 << nbits) * dim * 4
    kind = plan_factory(PRESETS[preset], n, dim, lists, preset)
    if preset == "ivf-pqfs-rflat":
        m, _ = choose_pq(n, dim)
        code = math.ceil(m / 2)  # fast-scan lists are padded to blocks of 32 codes: half a block each on average
        return kind, code + 4 * dim + 8, centroids + 16 * dim * 4 + lists * 16 * code
    if preset == "ivf-sq8":
        return kind, dim, centroids + 2 * dim * 4
    return kind, 4 * dim, centroids  # ivf-flat


def choose_index(vectors: np.ndarray, row_ids: np.ndarray, section: IndexSettings) -> Choice:
    """The chosen index (holding every vector), its search knobs and the report for the manifest."""
    n, dim = vectors.shape
    budget = int(section.memory_budget) if section.memory_budget else None
    target = section.recall_target
    held = _holdout(n)
    keep = np.setdiff1d(np.arange(n), held)
    exact = _exact_neighbours(vectors[keep], vectors[held])

    options, tried = candidates(n, dim, section.nlist, n_train=len(keep))
    best: tuple[float, Candidate, faiss.Index, dict] | None = None
    winner = None
    for cand in options:
        row = {"preset": cand.preset, "factory": cand.kind.factory, "estimated_bytes": cand.estimated_bytes}
        tried.append(row)
        if budget is not None and cand.estimated_bytes > budget:
            row["verdict"] = f"over budget ({_mb(cand.estimated_bytes)} > {_mb(budget)})"
            continue
        started = time.perf_counter()
        index = trained_index(vectors[keep], cand.kind)
        index.add_with_ids(vectors[keep], row_ids[keep].astype(np.int64))
        recall, params = _tune(index, vectors[held], row_ids[keep][exact], section, target)
        row.update(
            {"recall_at_10": recall, "search_params": params, "seconds": round(time.perf_counter() - started, 2)}
        )
        if best is None or recall > best[0]:
            best = (recall, cand, index, params)
        if recall >= target:
            row["verdict"] = "chosen"
            winner = best
            break
        row["verdict"] = f"recall@{RECALL_K} {recall:.4f} < {target}"
    if best is None:
        smallest = min(options, key=lambda c: c.estimated_bytes) if options else None
        need = (
            f"; the smallest candidate ({smallest.preset} {smallest.kind.factory}) needs about {_mb(smallest.estimated_bytes)}"
            if smallest
            else ""
        )
        raise IndexBuildError(
            f"index.memory_budget={_mb(budget)} is too small for {n} vectors of dim {dim}{need}; "
            "raise the budget or index fewer images"
        )
    recall, cand, index, params = best
    if winner is None:
        next(r for r in tried if r.get("factory") == cand.kind.factory)["verdict"] = (
            "chosen (best recall within budget)"
        )
        reason = (
            f"no candidate within {_mb(budget)} reached recall@{RECALL_K} {target}; kept the best measured: "
            f"{cand.preset} ({cand.kind.factory}) at {recall:.4f}"
        )
    else:
        fits = f"within {_mb(budget)}" if budget is not None else "with no memory budget"
        reason = (
            f"{cand.preset} ({cand.kind.factory}) is the fastest candidate {fits} that reached "
            f"recall@{RECALL_K} {recall:.4f} >= {target} on {len(held)} held-out queries"
            + (f" with {_knobs(params)}" if params else "")
        )
    index.add_with_ids(vectors[held], row_ids[held].astype(np.int64))
    report = {
        "chosen": cand.preset,
        "factory": cand.kind.factory,
        "reason": reason,
        "target_met": winner is not None,
        "recall_target": target,
        "memory_budget": budget,
        f"heldout_recall_at_{RECALL_K}": recall,
        "holdout_queries": int(len(held)),
        "candidates": tried,
    }
    return Choice(cand.kind, index, params, report)


def _holdout(n: int) -> np.ndarray:
    """Seeded positions kept out of the trial index and used as its queries."""
    size = min(HOLDOUT_MAX, max(1, int(n * HOLDOUT_FRACTION)))
    return seeded_sample(n, size, seed=1)


def _exact_neighbours(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Positions in `base` of each query's exact top-k (L2)."""
    flat = faiss.IndexFlatL2(base.shape[1])
    flat.add(base)
    return search(flat, queries, RECALL_K)[1]


def _tune(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, section: IndexSettings, target: float
) -> tuple[float, dict[str, int]]:
    """(recall, knobs): the cheapest knob setting (1x, 2x, 4x the configured one) that reaches
    the target; when none does, the cheapest within MARGIN of the best recall measured, so a
    knob that buys almost nothing (PQ-bound recall) does not cost 4x the search time."""
    measured: list[tuple[float, dict[str, int]]] = []
    for times in ESCALATION:
        params = search_params_for(
            index, section.nprobe * times, section.ef_search * times, section.refine_k_factor * times
        )
        apply_search_params(index, params)
        _, got = search(index, queries, RECALL_K)
        recall = round(float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)])), 6)
        measured.append((recall, params))
        capped = len(measured) > 1 and measured[-2][1] == params  # e.g. nprobe already at nlist
        if recall >= target or not params or capped:
            break
    recall, params = next(m for m in measured if m[0] >= target or m[0] >= max(r for r, _ in measured) - MARGIN)
    apply_search_params(index, params)
    return recall, params


def _knobs(params: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _mb(value: int | None) -> str:
    return "no limit" if value is None else f"{value / 1e6:.1f} MB"
