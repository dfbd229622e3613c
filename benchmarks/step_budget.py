"""How many pretraining steps a small photo collection needs: precision@10 against steps, several collections.

    # 26, 52 and 78 of the 156 photos: collections that share no source photo
    for spec in "1/6 312" "2-3/6 624" "4-6/6 936"; do set -- $spec
        .venv/bin/python benchmarks/make_photo_copies.py --cache /data/photo-copies-cache --seed 1 --part $1 \\
            --out /data/pc-$2
    done
    .venv/bin/python benchmarks/step_budget.py --collections /data/pc-312 /data/pc-624 /data/pc-936 \\
        --steps 300 500 700 1000 --work-dir /data/curves

For each collection and each `--steps` value, one `quality_against_baselines.py` run (a real `lookalike run
--steps S`, leave-one-out, with its raw-pixel and untrained-encoder baselines on the same queries), in one
artifacts root per collection so its dataset stage is taken once; a record already in `--work-dir` is read, not
run again (a stopped grid resumes). Prints one table: precision@10 (kNN@10) per collection and step count, the
baselines, and the pretraining seconds each run took (the encoder stage's own clock of its passes).
`--table` prints the table of records made before, without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

HERE = Path(__file__).resolve().parent


def record_path(work: Path, collection: Path, steps: int) -> Path:
    return work / f"{collection.name}-{steps}.json"


def run(work: Path, collection: Path, steps: int) -> dict:
    out = record_path(work, collection, steps)
    if not out.is_file():
        done = subprocess.run(
            [
                sys.executable,
                str(HERE / "quality_against_baselines.py"),
                "--dataset",
                str(collection),
                "--name",
                f"{collection.name}, {steps} steps",
                f"--run-arg=--steps={steps}",
                "--root",
                str(work / f"root-{collection.name}"),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"{collection} at {steps} steps failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def row(record: dict) -> dict:
    baselines = record.get("baselines") or {}
    return {
        "n_images": record["n_images"],
        "steps": record["encoder"]["steps"],
        "precision_at_10": record["run"]["precision_at_10"],
        "knn_accuracy": record["run"]["knn_accuracy"],
        "pixels": baselines.get("pixels", {}).get("precision_at_10"),
        "init": baselines.get("init", {}).get("precision_at_10"),
        "pretrain_seconds": record["encoder"].get("pretrain_seconds"),
    }


def table(rows: dict[str, list[dict]]) -> str:
    steps = sorted({r["steps"] for runs in rows.values() for r in runs})
    lines = [
        "| collection | " + " | ".join(f"{s} steps" for s in steps) + " | raw pixels | untrained encoder |",
        "|---|" + "---|" * (len(steps) + 2),
    ]
    for name, runs in rows.items():
        by_steps = {r["steps"]: r for r in runs}
        cells = []
        for s in steps:
            r = by_steps.get(s)
            cells.append(
                f"{r['precision_at_10']:.3f} ({r['knn_accuracy']:.3f}), {r['pretrain_seconds'] / 60:.1f} min"
                if r
                else ""
            )
        first = runs[0]
        lines.append(
            f"| {name}, {first['n_images']:,} images | " + " | ".join(cells) + f" | {first['pixels']:.3f} | "
            f"{first['init']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", type=Path, nargs="+", default=[])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 500, 700, 1000])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/lookalike-step-budget"))
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of these quality records and stop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.table:
        grouped: dict[str, list[dict]] = {}
        for path in args.table:
            record = json.loads(path.read_text())
            grouped.setdefault(record["collection"].split(",")[0], []).append(row(record))
        print(table(grouped))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows = {c.name: [row(run(args.work_dir, c, s)) for s in args.steps] for c in args.collections}
    emit(
        {
            "benchmark": "step_budget",
            "started": started,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
            "collections": {c.name: str(c) for c in args.collections},
            "rows": rows,
            "table": table(rows),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
