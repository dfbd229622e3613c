"""One row of the "Quality against baselines" table: a real `lookalike run` and its own baselines.

Runs `lookalike run --json` on a collection (default settings plus any `--set`), with W&B
disabled and no promotion, and records from its summary what the table shows: the run's
kNN@10, precision@10 and mAP@10, the raw-pixel and starting-point baselines scored by the same
evaluation on the same queries, the gain over each, the steps trained with the reason the
budget gave, the recipe's other choices, and the seconds of pretraining (the encoder stage's
own timing of its passes) and of the whole command.

Usage:
    .venv/bin/python benchmarks/quality_against_baselines.py --dataset /tmp/photo-copies --name photo-copies \
        [--run-arg=--steps=300 ...] [--root DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _record import emit

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--name", required=True, help="the collection's name in the table")
    parser.add_argument("--run-arg", action="append", default=[], help="extra `lookalike run` argument (repeatable)")
    parser.add_argument("--root", help="artifacts root (default: a new temporary folder, so nothing is cached)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = args.root or tempfile.mkdtemp(prefix="quality-")
    command = [LOOKALIKE, "run", "--dataset", args.dataset, *args.run_arg]
    command += ["--set", "tracking.mode=disabled", "--no-promote", "--json", "--artifacts-root", root]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"lookalike run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = summary["metrics"]
    emit(
        {
            "benchmark": "quality_against_baselines",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "collection": args.name,
            "command": shlex.join(["lookalike", *command[1:]]).replace(root, "<root>"),
            "n_images": metrics["n_images"],
            "images": metrics.get("images"),
            "protocol": metrics.get("evaluation_protocol"),
            "run": {m: metrics.get(m) for m in ("knn_accuracy", "precision_at_10", "map_at_10")},
            "baselines": summary.get("baselines"),
            "gain": summary.get("gain"),
            **({"distillation": summary["distillation"]} if summary.get("distillation") else {}),
            "encoder": summary.get("encoder"),
            "stage_seconds": {name: stage["seconds"] for name, stage in summary["stages"].items()},
            "command_seconds": round(seconds, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
