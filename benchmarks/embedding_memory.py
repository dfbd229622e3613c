"""Peak memory of the embeddings stage: 7,000 vs 70,000 Fashion-MNIST images.

The stage streams: a shard's vectors are written as soon as they are computed, images are
decoded batch by batch from the memory-mapped snapshot, and nothing holds every image. So its
peak resident memory should barely grow with the number of images; the goal is at most 1.2x
from 7k to 70k.

Each measurement is a fresh child process that runs the embeddings stage alone
(`lookalike.stages.embeddings.stage.run_embeddings_stage`, reuse off, a fresh stage folder) on a snapshot and a
random-init encoder made beforehand by this script (`encoder.epochs=0`; the weights do not
change memory). Its peak RSS is the child's `ru_maxrss` from `os.wait4`: everything the child
touched, including imports (torch, datasets) and the snapshot pages it read through the
memory map. A third child that only imports the stage's modules and loads the encoder gives
the floor every run starts from, so the stage's own growth can be read off.

Datasets: the 70,000 Fashion-MNIST images (train + test) from Debian's `dataset-fashion-mnist`,
written once as a parquet file under `--work-dir` and ingested by the real dataset stage; the
7,000 are a seeded random subset of them (`dataset.limit`). The encoder is the current default
(`lookalike.core.settings.load_settings()`), or `--backbone/--width/--input-size`.

Usage:
    .venv/bin/python benchmarks/embedding_memory.py [--sizes 7000 70000] [--batch-size N]
        [--num-workers N] [--threads N] [--backbone NAME] [--width W] [--input-size PX]
        [--work-dir DIR] [--out FILE]

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from _embedding_setup import add_stage_arguments, dataset_source, describe_model, prepare_stages
from _record import emit

FASHION_MNIST_IMAGES = 70_000


def child(job: dict) -> None:
    """Run inside the measured process: the embeddings stage alone (or, for the floor, only its imports)."""
    import torch

    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.settings import EmbeddingsSettings
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.checkpoint import load_encoder

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    root = Path(job["root"])
    dataset = read_manifest(root, "dataset", job["dataset"])
    encoder = read_manifest(root, "encoder", job["encoder"])
    if job.get("floor"):
        load_encoder(root, encoder)
        print(json.dumps({}))
        return
    started = time.perf_counter()
    result = run_embeddings_stage(EmbeddingsSettings(**job["embeddings"]), dataset, encoder, root)
    stats = result.manifest.stats
    print(
        json.dumps(
            {
                "status": result.status,
                "seconds": round(time.perf_counter() - started, 2),
                "images_embedded": stats["images_embedded"],
                "n_shards": stats["n_shards"],
            }
        )
    )


def peak_rss(job: dict) -> tuple[int, dict]:
    """(peak RSS bytes, what the child printed) of one child process running `job`."""
    process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)], stdout=subprocess.PIPE)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"error: the measured child failed (exit {process.returncode})")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale, json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[7_000, FASHION_MNIST_IMAGES])
    add_stage_arguments(parser, "its artifacts/embeddings folder is deleted before every measured run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    root = args.work_dir / "artifacts"
    source = dataset_source("fashion-mnist", args.work_dir, args.source)
    runs = []
    for size in args.sizes:
        settings, dataset, encoder = prepare_stages(
            root,
            {
                "dataset.source": source,
                "dataset.limit": size if size < FASHION_MNIST_IMAGES else None,
                "encoder.backbone": args.backbone,
                "encoder.width": args.width,
                "encoder.input_size": args.input_size,
                "embeddings.batch_size": args.batch_size,
                "embeddings.num_workers": args.num_workers,
            },
        )
        job = {
            "root": str(root),
            "dataset": dataset.key,
            "encoder": encoder.key,
            "threads": args.threads,
            "embeddings": settings.embeddings.model_dump(mode="json"),
        }
        if not runs:
            floor, _ = peak_rss({**job, "floor": True})
        shutil.rmtree(root / "embeddings", ignore_errors=True)
        print(f"embedding {dataset.stats['n_images']} images in a child process ...", file=sys.stderr)
        rss, report = peak_rss(job)
        runs.append(
            {
                "n_images": dataset.stats["n_images"],
                "peak_rss_bytes": rss,
                "peak_rss_mib": round(rss / 2**20, 1),
                "above_floor_mib": round((rss - floor) / 2**20, 1),
                "snapshot_mib": round(sum(f.bytes for f in dataset.files) / 2**20, 1),
                **report,
            }
        )
        print(runs[-1], file=sys.stderr)

    emit(
        {
            "benchmark": "embedding_memory",
            "date": date.today().isoformat(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "versions": _versions(),
            "model": describe_model(encoder),
            "embeddings": settings.embeddings.model_dump(mode="json"),
            "torch_threads": args.threads or "torch's default",
            "floor_rss_mib": round(floor / 2**20, 1),
            "runs": runs,
            "ratio_largest_to_smallest": round(runs[-1]["peak_rss_bytes"] / runs[0]["peak_rss_bytes"], 3),
            "goal": "ratio <= 1.2",
        },
        args.out,
    )


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "datasets", "pyarrow", "numpy")}


if __name__ == "__main__":
    main()
