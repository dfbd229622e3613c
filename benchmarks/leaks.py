"""Leak-aware evaluation on a real train/test split: how many test images have an exact or near copy
among the training images, and the scores with and without them.

An existing encoder stage (e.g. the Fashion-MNIST 10k benchmark's) embeds the source's `train` split
into a flat index; the evaluation stage queries it with every image of the held-out split and reports
`leaks` and `clean` (lookalike.stages.evaluation.leaks). Baselines and duplicate groups are off: the
record is about the leaks. Timings are `time.perf_counter` around each stage.

    .venv/bin/python benchmarks/leaks.py --dataset /tmp/fm-full/data --encoder-root /tmp/bench-fm10k \\
        --out benchmarks/results/leaks_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

from lookalike.core.manifest import find_manifest  # noqa: E402
from lookalike.core.settings import (  # noqa: E402
    DatasetSettings,
    EmbeddingsSettings,
    EvaluationSettings,
    IndexSettings,
)
from lookalike.stages.dataset.stage import run_dataset_stage  # noqa: E402
from lookalike.stages.embeddings.stage import run_embeddings_stage  # noqa: E402
from lookalike.stages.evaluation.stage import query_dataset_section, run_evaluation_stage  # noqa: E402
from lookalike.stages.index.stage import run_index_stage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a source with a train and a test split")
    parser.add_argument("--encoder-root", type=Path, required=True, help="an artifacts root with one encoder stage")
    parser.add_argument("--encoder-key", help="which encoder, when the root has several")
    parser.add_argument("--artifacts-root", type=Path, help="where to build (default: a temporary folder)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = args.artifacts_root or Path(tempfile.mkdtemp(prefix="leaks-")) / "artifacts"
    key = args.encoder_key or next((args.encoder_root / "encoder").glob("*/manifest.json")).parent.name
    if not (root / "encoder" / key).exists():
        shutil.copytree(args.encoder_root / "encoder" / key, root / "encoder" / key)
    encoder = find_manifest(root, "encoder", key)
    section = EvaluationSettings(max_queries=None, baselines=[], duplicates=False)
    seconds = {}

    def timed(name, run):
        started = time.perf_counter()
        result = run()
        seconds[name] = round(time.perf_counter() - started, 1)
        return result.manifest

    dataset_section = DatasetSettings(source=args.dataset, split="train")
    dataset = timed("dataset", lambda: run_dataset_stage(dataset_section, root))
    queries_section = query_dataset_section(dataset_section, section, root)
    queries = timed("queries", lambda: run_dataset_stage(queries_section, root))
    embeddings = timed("embeddings", lambda: run_embeddings_stage(EmbeddingsSettings(), dataset, encoder, root))
    index = timed("index", lambda: run_index_stage(IndexSettings(type="flat-l2"), embeddings, root))
    evaluation = timed("evaluation", lambda: run_evaluation_stage(section, dataset, embeddings, index, root, queries))
    stats = evaluation.stats
    k = stats["k"]
    emit(
        {
            "benchmark": "leaks",
            "dataset": args.dataset,
            "encoder": {"key": key, **{s: encoder.settings.get(s) for s in ("method", "backbone", "width", "steps")}},
            "encoder_trained_on": encoder.inputs.get("dataset"),
            "n_indexed": dataset.stats["n_images"],
            "protocol": stats["protocol"],
            "n_queries": stats["n_queries"],
            "leaks": stats["leaks"],
            "raw": {m: stats[m] for m in ("knn_accuracy", f"precision_at_{k}", f"map_at_{k}")},
            "clean": stats["clean"],
            "map": stats["map"],
            "seconds": seconds,
            "root": str(root),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
