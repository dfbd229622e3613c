"""What a metadata filter costs: filtered against unfiltered search, per index preset and selectivity.

Takes a finished index chain (its embeddings and dataset snapshot), builds flat-l2, hnsw and
ivf-flat over the same whitened vectors exactly as the index stage does (default knobs), and
searches 1,000 stored vectors for their 10 nearest neighbours:

- without a filter, then with filters of decreasing selectivity on the index's own metadata;
- per (preset, filter): milliseconds per query (one batched call), the time to evaluate the
  filter over the metadata, recall@10 against exact search restricted to the matching rows, and
  the share of queries for which the approximate index's own walk (IVF lists at nprobe, the HNSW
  beam at efSearch) found fewer than k matching rows: those are searched again exhaustively, and
  a filter matching at most 10% of the rows skips the walk (`factory.EXACT_BELOW`).

    .venv/bin/python benchmarks/filtered_search.py --root <artifacts root> [--index KEY] \\
        --out benchmarks/results/filtered_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np

from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.filters import parse_filter
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.embeddings.shards import load_embeddings
from lookalike.stages.index.factory import (
    PRESETS,
    apply_search_params,
    build_index,
    current_knobs,
    filtered_params,
    plan_factory,
    prepare_vectors,
    search,
    search_params_for,
)
from lookalike.stages.index.metadata import Metadata, build_metadata
from lookalike.stages.index.whitening import fit_whitening
from lookalike.stages.sampling import seeded_sample

K = 10
QUERIES = 1000
PRESET_NAMES = ("flat-l2", "hnsw", "ivf-flat")


def filters_for(n: int, label: str) -> list[str]:
    """From no filter, 50%, 10% (one label) down to about 0.1% of the rows (row ids are in no relation to content here)."""
    return [
        "",
        f"row<{n // 2}",
        f'label="{label}"',
        f'label="{label}" and row<{n // 2}',
        f'label="{label}" and row<{n // 20}',
        f"row<{max(n // 1000, K)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--index", help="index stage key (default: the newest finished one)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)

    key = args.index or max((args.root / "index").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime).parent.name
    index_manifest = read_manifest(args.root, "index", key)
    embeddings = read_manifest(args.root, "embeddings", index_manifest.inputs["embeddings"])
    dataset = read_manifest(args.root, "dataset", index_manifest.inputs["dataset"])
    raw, row_ids = load_embeddings(args.root, embeddings)
    started = time.perf_counter()
    metadata = Metadata(build_metadata(open_snapshot(args.root, dataset), dataset))
    metadata_seconds = time.perf_counter() - started
    n = len(raw)
    label = metadata.table.column("label")[0].as_py()

    prepared = prepare_vectors(raw, "l2")
    whitening = fit_whitening(prepared, index_manifest.settings.get("whitening", 0.5))
    vectors = whitening.apply(prepared)
    queries = raw[seeded_sample(n, QUERIES)]
    whitened_queries = whitening.apply(prepare_vectors(queries, "l2"))

    rows = []
    for name in PRESET_NAMES:
        kind = plan_factory(PRESETS[name], n, vectors.shape[1], None, name)
        inner = build_index(vectors, row_ids, kind)
        apply_search_params(inner, search_params_for(inner, 16, 64, 4))
        index = whitening.wrap(inner)
        search(index, queries[:10], K)  # warm-up
        for text in filters_for(n, label):
            filter_ = parse_filter(text or None)
            metadata._rows_of.clear()  # uncached: what the first query with this filter pays
            started = time.perf_counter()
            allowed = metadata.rows(filter_) if filter_ else None
            filter_seconds = time.perf_counter() - started
            started = time.perf_counter()
            _, got = search(index, queries, K, allowed)
            seconds = time.perf_counter() - started
            keep = np.isin(row_ids, allowed) if allowed is not None else np.ones(n, bool)
            exact = faiss.IndexFlatL2(vectors.shape[1])
            exact.add(vectors[keep])
            _, truth = exact.search(whitened_queries, min(K, int(keep.sum())))
            truth = row_ids[keep][truth]
            recall = float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))
            retried = 0.0
            if allowed is not None and not kind.exact:  # what the walk alone returns
                params, _keep = filtered_params(index, np.unique(allowed), current_knobs(inner))
                _, first = index.search(queries, min(K, len(allowed)), params=params)
                retried = float((first < 0).any(axis=1).mean())
            row = {
                "preset": name,
                "filter": text or "(none)",
                "matching_rows": int(keep.sum()),
                "selectivity": round(float(keep.mean()), 5),
                "ms_per_query": round(1000 * seconds / QUERIES, 4),
                "filter_ms": round(1000 * filter_seconds, 2),
                f"recall_at_{K}": round(recall, 4),
                "ann_walk_came_back_short": round(retried, 4),
            }
            rows.append(row)
            print(json.dumps(row))

    result = {
        "benchmark": "filtered_search",
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "faiss": faiss.__version__,
        "collection": dataset.stats.get("source"),
        "index": key,
        "n": n,
        "dim": int(vectors.shape[1]),
        "queries": QUERIES,
        "k": K,
        "metadata_build_seconds": round(metadata_seconds, 2),
        "command": f"python benchmarks/filtered_search.py --root <root> --index {key} --out {args.out}",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def _knobs(inner) -> dict[str, int]:
    from lookalike.stages.index.factory import _current_knobs

    return _current_knobs(inner)


if __name__ == "__main__":
    main()
