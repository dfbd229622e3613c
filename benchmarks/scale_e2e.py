"""End to end at scale: `lookalike run` on one large collection, then the same run again (cached).

What a user's first run and a scheduled re-run cost on this machine, stage by stage:

1. `lookalike run --dataset D --steps S --json` (plus any extra run flags after `--`) in a fresh
   artifacts root and a fresh `PREFECT_HOME`, W&B offline (its default without an API key), under
   `/usr/bin/time -v`: wall seconds, CPU seconds and peak RSS of the whole process tree's largest
   process (the run; its decode workers and the temporary Prefect server are separate processes).
2. Per stage, from the summary and each stage's manifest: status, wall seconds, CPU seconds of the
   build, and the run's peak RSS when the stage ended (`timings.peak_rss_mb`: the stage whose figure
   first rises above the previous ones set the peak).
3. The same command again: every stage must be `cached` (the script fails otherwise); its wall
   seconds against the first run's, and a bare Prefect start-up (`cached_rerun.py` measures that
   start-up against a cached run of the sample: the difference is what the stages cost).

Usage (collections made by make_big_folder.py):
    .venv/bin/python benchmarks/scale_e2e.py --dataset /data/fm-100k --out benchmarks/results/scale_e2e_100k.json
    .venv/bin/python benchmarks/scale_e2e.py --table benchmarks/results/scale_e2e_*.json   # the README table

Figures are from one run each on the machine named in the record, with its load average: read CPU
seconds and peak RSS when the machine was shared (they move less with load than wall seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _record import emit

REPO = Path(__file__).resolve().parents[1]
STAGES = ("dataset", "encoder", "embeddings", "index", "evaluation")


def timed_run(command: list[str], env: dict[str, str], folder: Path, name: str) -> dict:
    """Run `command` under /usr/bin/time -v; its summary (stdout JSON) and resource figures."""
    timing = folder / f"{name}.time"
    started = time.perf_counter()
    with open(folder / f"{name}.log", "w") as log:
        done = subprocess.run(
            ["/usr/bin/time", "-v", "-o", str(timing), *command], env=env, stdout=subprocess.PIPE, stderr=log, text=True
        )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name}: exit {done.returncode}; see {folder / (name + '.log')}")
    text = timing.read_text()

    def field(label: str) -> float:
        return float(re.search(rf"{re.escape(label)}: ([\d.]+)", text).group(1))

    return {
        "summary": json.loads(done.stdout),
        "wall_s": round(wall, 1),
        "cpu_s": round(field("User time (seconds)") + field("System time (seconds)"), 1),
        "peak_rss_mb": round(field("Maximum resident set size (kbytes)") / 1024),
    }


def stage_rows(summary: dict, root: Path) -> dict[str, dict]:
    rows = {}
    for name in STAGES:
        stage = summary["stages"].get(name)
        if stage is None:
            continue
        manifest = json.loads((root / name / stage["key"] / "manifest.json").read_text())
        timings = manifest.get("timings", {})
        rows[name] = {
            "status": stage["status"],
            "wall_s": round(stage["seconds"], 1),
            "cpu_s": timings.get("cpu_seconds"),
            "peak_rss_mb_at_end": timings.get("peak_rss_mb"),
        }
    return rows


def measure(dataset: str, steps: int, extra: list[str], workdir: Path) -> dict:
    root = workdir / "artifacts"
    env = {
        **os.environ,
        "LOOKALIKE_ARTIFACTS_ROOT": str(root),
        "PREFECT_HOME": str(workdir / "prefect"),
        "WANDB_DIR": str(workdir),
    }
    command = [str(REPO / ".venv" / "bin" / "lookalike"), "run", "--dataset", dataset, "--steps", str(steps), "--json"]
    command += extra
    load = os.getloadavg()[0]
    first = timed_run(command, env, workdir, "first")
    again = timed_run(command, env, workdir, "cached")
    statuses = {name: s["status"] for name, s in again["summary"]["stages"].items()}
    if set(statuses.values()) != {"cached"}:
        sys.exit(f"the second run was not fully cached: {statuses}")
    summary = first["summary"]
    metrics = summary.get("metrics", {})
    dataset_manifest = root / "dataset" / summary["stages"]["dataset"]["key"] / "manifest.json"
    return {
        "n_images": json.loads(dataset_manifest.read_text())["stats"]["n_images"],
        "first": {k: v for k, v in first.items() if k != "summary"},
        "stages": stage_rows(summary, root),
        "cached": {k: v for k, v in again.items() if k != "summary"},
        "quality": {
            "precision_at_10": metrics.get("precision_at_10"),
            "knn_accuracy": metrics.get("knn_accuracy"),
            "baselines": summary.get("baselines"),
            "sampled": summary.get("sampled"),
            "duplicates": summary.get("duplicates"),
            "index": summary.get("index"),
        },
        "load_avg_1m": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)},
    }


def table(paths: list[Path]) -> str:
    records = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["result"]["n_images"])
    head = "| images | " + " | ".join(STAGES) + " | outside the stages | whole run | peak RSS | cached re-run |"
    lines = [head, "|" + "---|" * (len(STAGES) + 5)]
    for record in records:
        r = record["result"]
        cells = [f"{r['n_images']:,}"]
        for name in STAGES:
            s = r["stages"].get(name)
            cells.append(
                f"{s['wall_s']:.0f} s ({s['cpu_s']:.0f} CPU s, {s['peak_rss_mb_at_end']:,.0f} MB)" if s else ""
            )
        # Prefect's start, the listing and hashing that make the dataset key, the summary: the run less its stages
        outside = r["first"]["wall_s"] - sum(s["wall_s"] for s in r["stages"].values())
        cells += [
            f"{outside:.0f} s",
            f"{r['first']['wall_s']:.0f} s ({r['first']['cpu_s']:.0f} CPU s)",
            f"{r['first']['peak_rss_mb']:,} MB",
            f"{r['cached']['wall_s']:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--workdir", type=Path, help="where the artifacts root and Prefect home go (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, nargs="+", help="print the README table of these records and stop")
    parser.add_argument("extra", nargs="*", help="more `lookalike run` flags, after --")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.dataset:
        parser.error("--dataset is required")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lookalike-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "scale_e2e",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "dataset": args.dataset,
        "steps": args.steps,
        "extra_flags": args.extra,
        "workdir": str(workdir),
    }
    record["result"] = measure(args.dataset, args.steps, args.extra, workdir)
    emit(record, args.out)


if __name__ == "__main__":
    main()
