"""One `lookalike run` without Prefect: the product's stages called in the flow's order, on whatever device torch sees.

Calls the lib functions the Prefect tasks wrap (`run_dataset_stage` -> `run_encoder_stage` ->
`run_embeddings_stage` -> `run_index_stage` -> `run_evaluation_stage`, leave-one-out) with the
settings `lookalike run --set ...` would use, and records what `quality_against_baselines.py`
records from a real run's summary: kNN@10, precision@10 and mAP@10 beside the raw-pixel and
starting-point baselines the evaluation scores on the same queries, the encoder's steps, pretraining
seconds and images/s, and each stage's seconds. For machines without Prefect and W&B (a lent GPU):
the stages themselves are the same code. Given a root where `recipe_curve.py` already trained the
same settings, the encoder stage is found cached and only the later stages run.

Usage:
    .venv/bin/python benchmarks/stage_chain.py --dataset /tmp/photo-copies --name photo-copies \
        [--set encoder.backbone=resnet50 ...] [--root DIR] [--out FILE.json] [--note "..."]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from _record import emit  # noqa: E402

from lookalike.core.settings import load_settings  # noqa: E402
from lookalike.stages.dataset.stage import run_dataset_stage  # noqa: E402
from lookalike.stages.embeddings.stage import run_embeddings_stage  # noqa: E402
from lookalike.stages.encoder.stage import run_encoder_stage  # noqa: E402
from lookalike.stages.evaluation.stage import run_evaluation_stage  # noqa: E402
from lookalike.stages.index.stage import run_index_stage  # noqa: E402

METRICS = ("knn_accuracy", "precision_at_10", "map_at_10")


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--name", required=True, help="the collection's name in the tables")
    parser.add_argument("--set", action="append", default=[], help="section.field=value, as `lookalike run --set`")
    parser.add_argument("--root", help="artifacts root (default: a new temporary folder)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="stage-chain-"))
    sets = dict(value.split("=", 1) for value in args.set)
    settings = load_settings({"dataset.source": args.dataset, "artifacts_root": str(root), **sets})
    seconds: dict[str, float] = {}
    status: dict[str, str] = {}

    def timed(name: str, call, *a, **kw):
        started = time.perf_counter()
        result = call(*a, **kw)
        seconds[name] = round(time.perf_counter() - started, 2)
        status[name] = result.status
        print(f"{name}: {result.status} in {seconds[name]} s", flush=True)
        return result.manifest

    started = time.perf_counter()
    dataset = timed("dataset", run_dataset_stage, settings.dataset, root)
    encoder = timed("encoder", run_encoder_stage, settings.encoder, dataset, root)
    embeddings = timed("embeddings", run_embeddings_stage, settings.embeddings, dataset, encoder, root)
    index = timed("index", run_index_stage, settings.index, embeddings, root)
    evaluation = timed("evaluation", run_evaluation_stage, settings.evaluation, dataset, embeddings, index, root)
    stats, trained = evaluation.stats, encoder.stats
    emit(
        {
            "benchmark": "stage_chain",
            "date": date.today().isoformat(),
            "machine": device_name(),
            "collection": args.name,
            "dataset": args.dataset,
            "sets": args.set,
            "note": args.note,
            "n_images": trained.get("n_images"),
            "protocol": stats.get("protocol"),
            "n_queries": stats.get("n_queries"),
            "run": {m: stats.get(m) for m in METRICS},
            "baselines": {
                name: {"what": b.get("what"), **{m: b.get(m) for m in METRICS}}
                for name, b in (stats.get("baselines") or {}).items()
            },
            "encoder": {
                "settings": {k: encoder.settings.get(k) for k in ("backbone", "width", "input_size", "batch_size")},
                "crop_min_scale": encoder.settings.get("crop_min_scale"),
                "steps": trained.get("steps"),
                "steps_why": trained.get("steps_why"),
                "pretrain_seconds": trained.get("pretrain_seconds"),
                "images_per_second": trained.get("images_per_second"),
                "final_loss": (trained.get("losses") or [None])[-1],
            },
            "embeddings": {k: embeddings.stats.get(k) for k in ("n_vectors", "dim", "images_per_second")},
            "stage_status": status,
            "stage_seconds": seconds,
            "command_seconds": round(time.perf_counter() - started, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
