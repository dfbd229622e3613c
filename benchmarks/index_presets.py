"""Every FAISS preset on Fashion-MNIST: build seconds, bytes, batch QPS, recall@10 vs exact, kNN@10.

Database: the 60,000 training images; queries: the 10,000 test images (a held-out split, so no
query is in the index). Vectors are the raw pixels (784-d, scaled to [0, 1]): the benchmark
measures the indexes, and pixels need no encoder, so anyone can rerun it in minutes. Each preset
is built exactly as the `index` stage builds it (`plan_factory`, `build_index`, the recorded
`nprobe` / `efSearch`), so the figures are the product's.

- build seconds: training plus adding all 60k vectors;
- bytes: the serialized index (`faiss.serialize_index`), what `index.faiss` holds;
- batch QPS: all 10k queries in one `search` call, best of `--repeats` (one when a call takes
  more than 10 s);
- recall@10: overlap of the preset's top-10 with exact search's under the same metric (`flat-l2`,
  or `flat-ip` for the inner-product presets);
- kNN@10: majority label of the 10 nearest training images (ties to the nearest) vs the truth.

Then `auto` twice, as the index stage runs it (`lookalike.stages.index.auto.choose_index`): with no memory
budget, and with a budget of 1/8 of the flat index's bytes. Its build seconds include every
candidate it trained; its row adds the choice, the reason and its held-out recall.

Usage (needs Debian's `dataset-fashion-mnist` package, as `lib/lookalike/data/make_sample.py` does):
    .venv/bin/python benchmarks/index_presets.py [--nprobe 16] [--ef-search 64] [--k-factor 4] [--out FILE]

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import faiss
import numpy as np
from _record import emit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lookalike.core.settings import load_settings  # noqa: E402
from lookalike.stages.index.auto import choose_index  # noqa: E402
from lookalike.stages.index.factory import (  # noqa: E402
    PRESETS,
    apply_search_params,
    build_index,
    plan_factory,
    prepare_vectors,
    search_params_for,
)

SOURCE = Path("/usr/share/datasets/fashion-mnist")
K = 10


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(source: Path):
    def images(name):
        return read_idx(source / name).reshape(-1, 784).astype(np.float32) / 255.0

    return (
        images("train-images-idx3-ubyte.gz"),
        read_idx(source / "train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        read_idx(source / "t10k-labels-idx1-ubyte.gz"),
    )


def knn_accuracy(found: np.ndarray, db_labels: np.ndarray, truth: np.ndarray) -> float:
    correct = 0
    for row, label in zip(found, truth):
        votes = [db_labels[i] for i in row if i >= 0][:K]
        counts = Counter(votes)
        best = max(counts.values())
        correct += next(v for v in votes if counts[v] == best) == label
    return correct / len(truth)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--k-factor", type=int, default=4, help="refine k_factor (ivf-pqfs-rflat)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.source / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(
            f"error: no Fashion-MNIST under {args.source}: apt-get install dataset-fashion-mnist, or pass --source"
        )

    db, db_labels, queries, truth = load(args.source)
    ids = np.arange(len(db), dtype=np.int64)
    rows, exact = [], {}

    def measure(name, kind, index, params, build_seconds, **extra):
        apply_search_params(index, params)
        qs = prepare_vectors(queries, kind.metric)
        timings = []
        while len(timings) < args.repeats and sum(timings) < 10:
            started = time.perf_counter()
            _, found = index.search(qs, K)
            timings.append(time.perf_counter() - started)
        if kind.exact and name in PRESETS:
            exact[kind.metric] = found
        rows.append(
            {
                "preset": name,
                "factory": kind.factory,
                "search_params": params,
                "build_seconds": round(build_seconds, 2),
                "bytes": int(faiss.serialize_index(index).size),
                "batch_qps": round(len(qs) / min(timings)),
                f"recall_at_{K}": round(recall(found, exact[kind.metric]), 4),
                f"knn_at_{K}": round(float(knn_accuracy(found, db_labels, truth)), 4),
                **extra,
            }
        )
        print(rows[-1], file=sys.stderr)

    for name in ["flat-l2", *[p for p in PRESETS if p != "flat-l2"]]:
        preset = PRESETS[name]
        kind = plan_factory(preset, *db.shape, preset=name)
        started = time.perf_counter()
        index = build_index(prepare_vectors(db, kind.metric), ids, kind)
        build_seconds = time.perf_counter() - started
        measure(name, kind, index, search_params_for(index, args.nprobe, args.ef_search, args.k_factor), build_seconds)

    flat_bytes = rows[0]["bytes"]
    for label, budget in (("auto", None), ("auto, 1/8 of flat-l2's bytes", flat_bytes // 8)):
        section = load_settings(
            {
                "index.type": "auto",
                "index.memory_budget": budget,
                "index.nprobe": args.nprobe,
                "index.ef_search": args.ef_search,
                "index.refine_k_factor": args.k_factor,
            }
        ).index
        started = time.perf_counter()
        choice = choose_index(prepare_vectors(db, "l2"), ids, section)
        build_seconds = time.perf_counter() - started
        report = choice.report
        measure(
            label,
            choice.kind,
            choice.index,
            choice.search_params,
            build_seconds,
            memory_budget=budget,
            chosen=report["chosen"],
            reason=report["reason"],
            heldout_recall_at_10=report["heldout_recall_at_10"],
        )
    flat_qps = rows[0]["batch_qps"]
    for row in rows:
        row["qps_vs_flat_l2"] = round(row["batch_qps"] / flat_qps, 1)
    emit(
        {
            "benchmark": "index_presets",
            "date": date.today().isoformat(),
            "machine": {
                "platform": platform.platform(),
                "cpus": faiss.omp_get_max_threads(),
                "python": platform.python_version(),
            },
            "faiss": faiss.__version__,
            "data": {"database": "Fashion-MNIST train, 60000 x 784 pixels", "queries": "Fashion-MNIST test, 10000"},
            "presets": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
