"""The dataset stage at scale: seconds and peak memory of each step on one collection.

Each step runs in its own fresh process (the way a scheduled retrain or a cached re-run meets
it), timed from spawn to exit with `time.perf_counter`, with its peak RSS from `getrusage` and its
CPU seconds (user + system, which move less than wall time when other jobs share the machine):

- `key`: the dataset stage's key, from an empty artifacts root (every file listed and hashed);
- `build`: the stage itself (its key again, then the snapshot: list, read, check, write);
- `key_cached`: the key again in a new process, as a cached re-run computes it first;
- `splits`: the splits the evaluation stage asks the source for;
- `add_build` (with `--add N`): the collection is first hard-linked into a temporary copy (the
  given folder is never changed), measured there, then grown by N images with
  `benchmarks/make_big_folder.py --add` (new files at the end of each class folder, as a weekly
  upload lands) and the stage run again for the grown collection (its key, then its snapshot):
  the bytes it wrote under `<root>/dataset/` against a full snapshot's, and its time against the
  first run's (`key` + `build`, what a first run of the stage costs, and `build` alone), in wall and in
  CPU seconds.

Usage:
    .venv/bin/python benchmarks/dataset_scale.py --dataset /data/fm-100k --out benchmarks/results/dataset_scale_100k.json

The steps call the library, not the CLI: Prefect's start-up (measured by cached_rerun.py) is not
part of these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _record import emit

STEP = r"""
import json, os, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from lookalike.core.settings import DatasetSettings
from lookalike.stages.dataset import stage as dataset_stage
from lookalike.stages.dataset.sources import list_splits
step, source, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
section = DatasetSettings(source=source)
out = {}
t1 = time.perf_counter()
if step == "key":
    try:
        out["key"] = dataset_stage.dataset_key(section, root)[0]
    except TypeError:  # before the content-hash memo, the key took no root
        out["key"] = dataset_stage.dataset_key(section)[0]
elif step == "build":
    result = dataset_stage.run_dataset_stage(section, root)
    manifest = result.manifest if hasattr(result, "manifest") else result
    out["key"] = manifest.key
    out["n_images"] = manifest.stats["n_images"]
    out["storage"] = manifest.stats.get("storage")
elif step == "splits":
    out["splits"] = list_splits(section, root / "cache" / "huggingface")
out["work_s"] = round(time.perf_counter() - t1, 2)
usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
out["cpu_s"] = round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 1)  # workers too
out["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
out["peak_rss_worker_mb"] = round(children.ru_maxrss / 1024)
print("RESULT " + json.dumps(out))
"""


def run_step(step: str, source: str, root: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STEP, step, source, str(root)], capture_output=True, text=True, env=os.environ
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"step {step} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["wall_s"] = round(wall, 1)
    print(step, result, file=sys.stderr, flush=True)
    return result


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="the collection (a folder)")
    parser.add_argument("--root", type=Path, help="artifacts root (default: a new temporary folder)")
    parser.add_argument("--add", type=int, default=0, help="grow the collection by this many images and rerun")
    parser.add_argument("--steps", default="key,build,key_cached,splits")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--note",
        default="figures taken on a shared 2-core machine (other engineers' jobs ran beside them)",
        help="what the record says about the machine while it ran (its load average is recorded too)",
    )
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="dataset-scale-"))
    dataset = args.dataset
    if args.add:  # grown in a hard-linked copy: the collection itself is never changed
        dataset = str(Path(tempfile.mkdtemp(prefix="dataset-scale-copy-")) / Path(args.dataset).name)
        subprocess.run(["cp", "-al", args.dataset, dataset], check=True)
    files = sum(1 for f in Path(dataset).rglob("*") if f.is_file())
    record: dict = {
        "benchmark": "dataset_scale",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "dataset": args.dataset,
        "note": args.note,
        "files": files,
        "steps": {},
    }
    for step in args.steps.split(","):
        record["steps"][step] = run_step("key" if step == "key_cached" else step, dataset, root)
    if args.add:
        before = folder_bytes(root / "dataset")
        subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("make_big_folder.py")),
                "--out",
                dataset,
                "--n",
                str(files),
                "--add",
                str(args.add),
            ],
            check=True,
        )
        added = run_step("build", dataset, root)
        added["bytes_written"] = folder_bytes(root / "dataset") - before
        record["steps"]["add_build"] = added
        record["full_snapshot_bytes"] = before
        record["added"] = args.add
        steps = record["steps"]
        first = steps.get("key", {}).get("wall_s", 0) + steps.get("build", {}).get("wall_s", 0)
        record["add_vs_first"] = {
            "bytes_fraction": round(added["bytes_written"] / before, 4),
            "time_fraction_of_key_plus_build": round(added["wall_s"] / first, 3) if first else None,
            "time_fraction_of_build": round(added["wall_s"] / steps["build"]["wall_s"], 3)
            if "build" in steps
            else None,
            # CPU seconds (workers too) move less than wall time when other jobs share the machine
            "cpu_fraction_of_key_plus_build": round(
                added["cpu_s"] / (steps.get("key", {}).get("cpu_s", 0) + steps["build"]["cpu_s"]), 3
            )
            if "build" in steps
            else None,
            "work_fraction_of_key_plus_build": round(
                added["work_s"] / (steps.get("key", {}).get("work_s", 0) + steps["build"]["work_s"]), 3
            )
            if "build" in steps
            else None,
        }
        shutil.rmtree(Path(dataset).parent, ignore_errors=True)
    record["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    emit(record, args.out)


if __name__ == "__main__":
    main()
