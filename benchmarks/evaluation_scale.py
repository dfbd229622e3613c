"""The evaluation stage at scale: its seconds and peak memory on a finished chain, whole or sampled.

The chain (dataset -> encoder -> embeddings -> index) is made once by a run, e.g.

    LOOKALIKE_ARTIFACTS_ROOT=/tmp/fm100k /usr/bin/time -v .venv/bin/lookalike run --dataset /data/fm-100k --steps 20

Each measured evaluation then runs in its own fresh process over a new artifacts root that links to
that chain's stage folders (so no earlier evaluation is found cached), timed from spawn to exit with
`time.perf_counter`, with its peak RSS and CPU seconds from `getrusage`. The protocol is the chain's
own: a folder without a held-out split is evaluated leave-one-out.

- `--code DIR` runs the step with DIR/lib first on the import path: the package of an earlier commit
  (`git archive <commit> lib | tar -x -C DIR`) measures the code before a change on the same chain.
- `--sample-size N` sets `evaluation.sample_size` (code that has the setting); `--sample-size none`
  evaluates every indexed image.

Usage:
    .venv/bin/python benchmarks/evaluation_scale.py --root /tmp/fm100k --label after \\
        --out benchmarks/results/evaluation_scale_100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _record import emit

CHAIN = ("dataset", "encoder", "embeddings", "index")

STEP = r"""
import json, resource, sys, time
from pathlib import Path
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.settings import EvaluationSettings
from lookalike.stages.evaluation.stage import run_evaluation_stage
root, index_key, sample_size = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
index = read_manifest(root, "index", index_key)
dataset = read_manifest(root, "dataset", index.inputs["dataset"])
embeddings = read_manifest(root, "embeddings", index.inputs["embeddings"])
settings = {} if sample_size == "default" else {"sample_size": None if sample_size == "none" else int(sample_size)}
t0 = time.perf_counter()
result = run_evaluation_stage(EvaluationSettings(**settings), dataset, embeddings, index, root)
stats = result.manifest.stats
usage = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
out = {
    "key": result.manifest.key,
    "work_s": round(time.perf_counter() - t0, 1),
    "cpu_s": round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 1),
    "peak_rss_mb": round(usage.ru_maxrss / 1024),
    "protocol": stats["protocol"],
    "n_queries": stats["n_queries"],
    "sampled": stats.get("sampled"),
    "scores": {k: stats.get(k) for k in ("knn_accuracy", "precision_at_10", "map_at_10")},
    "baselines": {n: {k: m.get(k) for k in ("knn_accuracy", "precision_at_10", "map_at_10")}
                  for n, m in (stats.get("baselines") or {}).items()},
    "duplicates": {k: (stats.get("duplicates") or {}).get(k) for k in ("n_groups", "n_images")},
    "map_points": (stats.get("map") or {}).get("n_points"),
}
print("RESULT " + json.dumps(out))
"""


def linked_root(chain_root: Path) -> Path:
    """A new artifacts root whose chain stage folders are links to `chain_root`'s, with no evaluation."""
    root = Path(tempfile.mkdtemp(prefix="evaluation-scale-")) / "artifacts"
    root.mkdir()
    for stage in CHAIN:
        (root / stage).symlink_to((chain_root / stage).resolve(), target_is_directory=True)
    return root


def run_step(chain_root: Path, index_key: str, sample_size: str, code: Path | None) -> dict:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code / "lib"), env.get("PYTHONPATH")]))
    root = linked_root(chain_root)
    started_at, start = time.time(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STEP, str(root), index_key, sample_size], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"evaluation failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    result["wall_s"] = round(wall, 1)
    # the scores, baselines, leaks, grid and map are written before the duplicate groups: when the map
    # was written splits the stage's time between the two
    written = root / "evaluation" / result["key"] / "map.json"
    if written.exists():
        result["map_written_after_s"] = round(written.stat().st_mtime - started_at, 1)
    print(result, file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="artifacts root holding the finished chain")
    parser.add_argument("--index", help="the index key (default: the only index under --root)")
    parser.add_argument("--label", required=True, help="what this measurement is, e.g. before or after")
    parser.add_argument("--code", type=Path, help="a checkout whose lib/ to import instead (e.g. the code before)")
    parser.add_argument("--sample-size", default="default", help="evaluation.sample_size: a number, none or default")
    parser.add_argument("--out", type=Path, help="the record to add this measurement to (created when missing)")
    args = parser.parse_args()
    index_key = args.index or next((args.root / "index").glob("*/manifest.json")).parent.name
    record = json.loads(args.out.read_text()) if args.out and args.out.exists() else {"benchmark": "evaluation_scale"}
    measurement = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "code": str(args.code) if args.code else "this checkout",
        "sample_size": args.sample_size,
        "index": index_key,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
    }
    measurement.update(run_step(args.root, index_key, args.sample_size, args.code))
    measurement["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    record.setdefault("runs", {})[args.label] = measurement
    emit(record, args.out)


if __name__ == "__main__":
    main()
