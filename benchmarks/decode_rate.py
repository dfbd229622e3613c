"""Images decoded per second: a decode ceiling, the dataset stage and the embeddings stage, before and after
draft decoding in worker processes (issue 40 (b)), side by side in one run on the same files.

    git archive <commit before> | tar -x -C /tmp/lookalike-before   # the code to compare against
    .venv/bin/python benchmarks/decode_rate.py --folder /data/camera-10k --before /tmp/lookalike-before/lib \
        --out benchmarks/results/decode_rate_camera.json

1. Ceiling: every file read and decoded by plain PIL with JPEG draft to the size the stages need (the dataset
   stage's check decodes at 1/8 scale; the default encoder's 32 px input needs 2 x 32 px, also 1/8 on camera
   JPEGs), in a process pool of one worker per core (started and warmed before the clock starts); at the start
   and again at the end of the run, the ratios taken to the mean of both (the load drifts on a shared machine).
2. The dataset stage on the folder (a fresh artifacts root; `dataset.num_workers` = the cores, stated in the
   record: its auto starts them from 2,048 images).
3. The embeddings stage at the default encoder (the recipe's choice for this collection, random init: the rate
   does not depend on the weights), `embeddings.reuse=false`: after (this checkout, defaults: draft,
   num_workers=auto), after with num_workers=0 (draft alone), and before (the `--before` code in a subprocess,
   its defaults: full decode in one process). Images/s = images / the stage's wall seconds.
   With `--dataset-before LIB`, the dataset stage of that code too (a fresh artifacts root), for the dataset
   stage's before/after in the same run. The load average is recorded before and after each measurement.
4. Draft quality: on the first 24 files, the PSNR of a JPEG drafted to 1, 2 or 4 x the fit's size and then
   fitted (at 32 and 224 px), against the same fit of a full decode: what `DRAFT_FACTOR` trades.

`--dataset-side-by-side R` (with `--dataset-before`) measures only the dataset stage: the ceiling, then this
checkout's and the other's dataset stage alternately, R times each, then the ceiling again: a before/after at
the same load where a whole run's load drifts too much between its rows.

`--limit N` measures on the first N files (cam00000 ... in name order, hard-linked into a subset folder).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

CHECK_SIDE = 1  # the dataset stage's check: the smallest DCT scale
ENCODER_DRAFT = 64  # twice the default photo encoder's 32 px input


def _decode(args: tuple[str, int]) -> int:
    from PIL import Image

    path, side = args
    with Image.open(path) as image:
        image.draft("RGB", (side, side))
        image.load()
        return image.width * image.height


def ceiling(files: list[Path], side: int, workers: int) -> dict:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode, [(str(files[0]), side)] * workers))  # started and warm
        started = time.perf_counter()
        pixels = sum(pool.map(_decode, [(str(f), side) for f in files], chunksize=8))
        seconds = time.perf_counter() - started
    return {
        "draft_to": side,
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(files) / seconds, 1),
        "mean_decoded_pixels": round(pixels / len(files)),
    }


def draft_quality(files: list[Path], sizes=(32, 224), factors=(1, 2, 4)) -> dict:
    """PSNR (dB) of an image drafted to factor x size and then fitted to size, against the same fit of a full
    decode (lookalike's own decode and fit): what each draft factor costs in pixels."""
    import numpy as np

    from lookalike.stages.dataset.images import decode_rgb
    from lookalike.stages.dataset.torch_data import ResizeToTensor

    out: dict = {}
    for size in sizes:
        fit = ResizeToTensor(size)
        errors: dict[int, list[float]] = {f: [] for f in factors}
        for path in files:
            data = path.read_bytes()
            full = fit(decode_rgb(data, 1 << 40)).numpy().astype(np.float64)
            for f in factors:
                drafted = fit(decode_rgb(data, 1 << 40, draft_to=f * size)).numpy().astype(np.float64)
                errors[f].append(float(((drafted - full) ** 2).mean()))
        out[f"{size}px"] = {
            f"draft_x{f}": round(10 * math.log10(255**2 / max(float(np.mean(e)), 1e-12)), 1) for f, e in errors.items()
        }
    return out


# run in a subprocess with the code to measure on PYTHONPATH: dataset (cached), a random-init encoder, embeddings
STAGE_SCRIPT = """
import json, sys, time
from pathlib import Path
from lookalike.core.settings import load_settings
from lookalike.stages.dataset.stage import run_dataset_stage
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.stage import run_encoder_stage

root, source, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
settings = load_settings({"artifacts_root": str(root), "dataset.source": source, "encoder.epochs": 0,
                          "embeddings.reuse": False, **overrides})
t = time.perf_counter()
dataset = run_dataset_stage(settings.dataset, root)
dataset_seconds = time.perf_counter() - t
t = time.perf_counter()
encoder = run_encoder_stage(settings.encoder, dataset.manifest, root).manifest
encoder_seconds = time.perf_counter() - t
t = time.perf_counter()
embeddings = run_embeddings_stage(settings.embeddings, dataset.manifest, encoder, root)
seconds = time.perf_counter() - t
stats = embeddings.manifest.stats
print(json.dumps({
    "lookalike": __import__("lookalike").__file__,
    "dataset": {"status": dataset.status, "seconds": round(dataset_seconds, 2),
                "n_images": dataset.manifest.stats.get("n_images")},
    "encoder_seconds": round(encoder_seconds, 2),
    "encoder": {k: encoder.stats["spec"][k] for k in ("architecture", "width", "input_size")},
    "embeddings": {"status": embeddings.status, "seconds": round(seconds, 2), "images": stats["n_vectors"],
                   "images_per_second": round(stats["n_vectors"] / seconds, 1),
                   "decode_workers": stats.get("decode_workers", 0), "key": embeddings.manifest.key},
}))
"""


def run_stages(lib: Path, root: Path, source: Path, overrides: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(lib), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", STAGE_SCRIPT, str(root), str(source), json.dumps(overrides)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"stages failed with {lib}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


DATASET_SCRIPT = """
import json, sys, time
from pathlib import Path
from lookalike.core.settings import load_settings
from lookalike.stages.dataset.stage import run_dataset_stage

if __name__ == "__main__":
    root, source, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    settings = load_settings({"artifacts_root": str(root), "dataset.source": source, "dataset.num_workers": workers})
    t = time.perf_counter()
    result = run_dataset_stage(settings.dataset, root)
    print(json.dumps({"lookalike": __import__("lookalike").__file__, "status": result.status,
                      "seconds": round(time.perf_counter() - t, 2), "n_images": result.manifest.stats["n_images"]}))
"""


def dataset_only(lib: Path, root: Path, source: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(lib), "WANDB_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-c", DATASET_SCRIPT, str(root), str(source), str(workers)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"the dataset stage failed with {lib}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def loaded(measure, *args) -> dict:
    """`measure(*args)` (a dict) with the 1-minute load average before and after it: the machine is shared."""
    before = os.getloadavg()[0]
    out = measure(*args)
    return {**out, "load_average": [round(before, 1), round(os.getloadavg()[0], 1)]}


def side_by_side(args, files: list[Path], source: Path, root: Path, cores: int, record: dict) -> int:
    if not args.dataset_before:
        sys.exit("--dataset-side-by-side needs --dataset-before")
    record["dataset_before"] = str(args.dataset_before)
    record["ceiling"] = loaded(ceiling, files, CHECK_SIDE, cores)
    print("ceiling", record["ceiling"], file=sys.stderr)
    runs: list[dict] = []
    for _ in range(args.dataset_side_by_side):
        for name, lib in (("after", REPO / "lib"), ("before", args.dataset_before)):
            shutil.rmtree(root, ignore_errors=True)
            run = {"code": name, **loaded(dataset_only, lib, root, source, cores)}
            run["images_per_second"] = round(run["n_images"] / run["seconds"], 1)
            print(run, file=sys.stderr)
            runs.append(run)
    shutil.rmtree(root, ignore_errors=True)
    record["dataset_stages"] = runs
    record["ceiling_at_end"] = loaded(ceiling, files, CHECK_SIDE, cores)
    c = round((record["ceiling"]["images_per_second"] + record["ceiling_at_end"]["images_per_second"]) / 2, 1)
    record["ceiling_mean_images_per_second"] = c
    mean = {
        name: round(sum(r["images_per_second"] for r in runs if r["code"] == name) / args.dataset_side_by_side, 1)
        for name in ("after", "before")
    }
    record["ratios"] = {
        "dataset_stage_after_over_ceiling": round(mean["after"] / c, 2),
        "dataset_stage_before_over_ceiling": round(mean["before"] / c, 2),
        "dataset_stage_after_over_before": round(mean["after"] / mean["before"], 2),
    }
    record["uptime_at_end"] = uptime()
    emit(record, args.out)
    return 0


def camera_files(folder: Path, limit: int | None, work: Path) -> tuple[list[Path], list[Path], Path]:
    """(the first `limit` JPEGs of `folder` in name order, every one of them, the folder that holds just the
    first ones: `folder` itself, or their hard-linked subset under `work`)."""
    every = sorted(folder.rglob("*.jpg"), key=lambda p: p.name)
    files = every[:limit] if limit else every
    work.mkdir(parents=True, exist_ok=True)
    return files, every, subset(folder, files, work) if len(files) < len(every) else folder


def subset(folder: Path, files: list[Path], work: Path) -> Path:
    out = work / f"subset-{len(files)}"
    if not out.is_dir():
        tmp = work / f".subset-{len(files)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for f in files:
            target = tmp / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
        tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path("/data/camera-10k"))
    ap.add_argument("--before", type=Path, required=True, help="the lib/ folder of the code to compare against")
    ap.add_argument("--dataset-before", type=Path, help="the lib/ folder of a dataset stage to compare against")
    ap.add_argument("--dataset-side-by-side", type=int, metavar="R", help="only the dataset stages, alternately")
    ap.add_argument("--limit", type=int, help="the first N files only")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-decode-rate")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--note", default="", help="recorded as is (e.g. that the machine was shared)")
    args = ap.parse_args(argv)

    files, every, source = camera_files(args.folder, args.limit, args.work_dir)
    cores = len(os.sched_getaffinity(0))
    root = args.work_dir / f"artifacts-{len(files)}"
    shutil.rmtree(root, ignore_errors=True)
    record: dict = {
        "benchmark": "decode_rate",
        "folder": str(args.folder),
        "images": len(files),
        "of": len(every),
        "bytes": sum(f.stat().st_size for f in files),
        "cores": cores,
        "machine": f"{platform.node()} ({os.cpu_count()} cpus, {cores} usable)",
        "note": args.note,
        "uptime_at_start": uptime(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
    print(f"{len(files)} images, {record['bytes'] / 1e9:.2f} GB, {cores} cores", file=sys.stderr)
    if args.dataset_side_by_side:
        return side_by_side(args, files, source, root, cores, record)
    record["draft_psnr_db"] = {"images": min(24, len(files)), **draft_quality(files[:24])}
    print("draft quality", record["draft_psnr_db"], file=sys.stderr)
    record["ceiling"] = loaded(ceiling, files, CHECK_SIDE, cores)
    print("ceiling", record["ceiling"], file=sys.stderr)
    here = REPO / "lib"
    after = loaded(run_stages, here, root, source, {"dataset.num_workers": cores})
    print("after", after, file=sys.stderr)
    record["dataset_stage"] = {
        **after["dataset"],
        "load_average": after["load_average"],
        "num_workers": cores,
        "images_per_second": round(after["dataset"]["n_images"] / after["dataset"]["seconds"], 1),
    }
    record["encoder"] = after["encoder"]
    record["embeddings_after"] = {**after["embeddings"], "load_average": after["load_average"]}
    root_draft_only = root.with_name(root.name + "-draft-only")
    shutil.rmtree(root_draft_only, ignore_errors=True)
    shutil.copytree(root / "dataset", root_draft_only / "dataset")  # the same snapshot, not taken again
    no_workers = loaded(
        run_stages, here, root_draft_only, source, {"dataset.num_workers": cores, "embeddings.num_workers": 0}
    )
    record["embeddings_after_no_workers"] = {**no_workers["embeddings"], "load_average": no_workers["load_average"]}
    print("after, 0 workers", record["embeddings_after_no_workers"], file=sys.stderr)
    # its own artifacts root: a snapshot this checkout wrote under the same dataset key may be one it cannot read
    root_before = root.with_name(root.name + "-before")
    shutil.rmtree(root_before, ignore_errors=True)
    before = loaded(run_stages, args.before, root_before, source, {"dataset.num_workers": cores})
    print("before", before, file=sys.stderr)
    record["embeddings_before"] = {
        **before["embeddings"],
        "lookalike": before["lookalike"],
        "load_average": before["load_average"],
        "its_dataset_stage": before["dataset"],
    }
    if args.dataset_before:
        root_dataset_before = root.with_name(root.name + "-dataset-before")
        shutil.rmtree(root_dataset_before, ignore_errors=True)
        earlier = loaded(dataset_only, args.dataset_before, root_dataset_before, source, cores)
        print("dataset before", earlier, file=sys.stderr)
        record["dataset_stage_before"] = {
            **earlier,
            "num_workers": cores,
            "images_per_second": round(earlier["n_images"] / earlier["seconds"], 1),
        }
    # the ceiling again at the end: on a shared machine the load drifts over a run; ratios are to the mean of both
    record["ceiling_at_end"] = loaded(ceiling, files, CHECK_SIDE, cores)
    print("ceiling at the end", record["ceiling_at_end"], file=sys.stderr)
    c = round((record["ceiling"]["images_per_second"] + record["ceiling_at_end"]["images_per_second"]) / 2, 1)
    record["ceiling_mean_images_per_second"] = c
    record["ratios"] = {
        "dataset_stage_over_ceiling": round(record["dataset_stage"]["images_per_second"] / c, 2),
        "embeddings_after_over_ceiling": round(after["embeddings"]["images_per_second"] / c, 2),
        "embeddings_after_over_before": round(
            after["embeddings"]["images_per_second"] / before["embeddings"]["images_per_second"], 2
        ),
        "embeddings_draft_only_over_before": round(
            record["embeddings_after_no_workers"]["images_per_second"] / before["embeddings"]["images_per_second"], 2
        ),
        "embeddings_draft_only_over_ceiling": round(record["embeddings_after_no_workers"]["images_per_second"] / c, 2),
    }
    if args.dataset_before:
        record["ratios"]["dataset_stage_before_over_ceiling"] = round(
            record["dataset_stage_before"]["images_per_second"] / c, 2
        )
    record["uptime_at_end"] = uptime()
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
