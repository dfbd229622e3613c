"""Duplicate detection against known copies: plant exact and near copies into a real collection,
run `lookalike run` and `lookalike duplicates --json` on it, and score the reported groups.

Two kinds of truth:
- `--plant`: the collection's own images (the bundled sample by default) written to a folder, plus
  `--exact` byte-identical copies and `--near` edited copies per strength (see STRENGTHS; none of
  them is the calibration's own augmentation). A planted pair is true; any other pair reported
  is counted as false, although on Fashion-MNIST many are distinct product photos that look the
  same at 28 px (the record keeps the count of groups that hold no planted file).
- `--folders`: a collection whose class folders are copies of one photo each (photo copies, see
  PHOTO_COPIES.md): every pair inside a folder is true, every pair across folders false.

Scores are over unordered pairs of images: precision = reported pairs that are true / reported
pairs, recall = true pairs reported / true pairs (per strength for planted copies). Timings are
`time.perf_counter` around the two `lookalike` processes.

    .venv/bin/python benchmarks/duplicates.py --plant --out benchmarks/results/duplicates_sample.json
    .venv/bin/python benchmarks/duplicates.py --dataset /tmp/photo-copies --folders \\
        --out benchmarks/results/duplicates_photo_copies.json
    # or on a root where `lookalike run --dataset /tmp/photo-copies` already ran (read only):
    .venv/bin/python benchmarks/duplicates.py --dataset /tmp/photo-copies --folders --artifacts-root /tmp/bench-photo
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _trim(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    mw, mh = max(1, round(w * fraction)), max(1, round(h * fraction))
    return image.crop((mw, mh, w - mw, h - mh)).resize((w, h), Image.Resampling.BICUBIC)


# Near-copy edits from mild to strong; the calibration's own is a 0-5 % trim, brightness x0.95-1.05, JPEG 75.
STRENGTHS = {
    "jpeg-q85": lambda im: _jpeg(im, 85),
    "trim-3%+jpeg-q90": lambda im: _jpeg(_trim(im, 0.03), 90),
    "trim-6%+darker+jpeg-q80": lambda im: _jpeg(ImageEnhance.Brightness(_trim(im, 0.06)).enhance(0.92), 80),
    "mirror": lambda im: _jpeg(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 95),
}


def write_sample(folder: Path, work: Path) -> list[Path]:
    """The bundled sample's train split as an image folder (class subfolders, original bytes)."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage

    root = work / "sample-snapshot"
    settings = load_settings({"artifacts_root": str(root)})
    manifest = run_dataset_stage(settings.dataset, root).manifest
    snapshot = open_snapshot(root, manifest)
    names = manifest.stats["label_names"]
    paths = []
    for row_id, label, image in zip(snapshot["row_id"], snapshot["label"], snapshot["image"]):
        kind = Image.open(io.BytesIO(image["bytes"])).format.lower()
        path = folder / names[label].replace("/", "-") / f"row{row_id:05d}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image["bytes"])
        paths.append(path)
    return paths


def plant(paths: list[Path], n_exact: int, n_near: int, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Copy `n_exact` images byte for byte and `n_near` per strength with its edit, beside their
    originals (each original used once). Returns the planted (original, copy) paths by kind."""
    rng = np.random.default_rng(seed)
    picks = iter(rng.choice(len(paths), n_exact + n_near * len(STRENGTHS), replace=False))
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for j in range(n_exact):
        src = paths[next(picks)]
        copy = src.with_name(f"exact{j:03d}{src.suffix}")
        copy.write_bytes(src.read_bytes())
        pairs["exact"].append((str(src), str(copy)))
    for name, edit in STRENGTHS.items():
        for j in range(n_near):
            src = paths[next(picks)]
            copy = src.with_name(f"near-{name}-{j:03d}.jpg")
            with Image.open(src) as image:
                copy.write_bytes(edit(image))
            pairs[name].append((str(src), str(copy)))
    return pairs


def lookalike(*args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run([LOOKALIKE, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lookalike {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


def reported_pairs(report: dict) -> tuple[set[frozenset[str]], list[list[str]]]:
    from lookalike.stages.duplicates import report_groups

    groups = [g["paths"] for _, g in report_groups(report)]
    return {frozenset(p) for g in groups for p in itertools.combinations(g, 2)}, groups


def score(found: set[frozenset[str]], true: set[frozenset[str]]) -> dict:
    hit = found & true
    return {
        "pairs_reported": len(found),
        "pairs_true": len(true),
        "pairs_found": len(hit),
        "precision": round(len(hit) / len(found), 4) if found else None,
        "recall": round(len(hit) / len(true), 4) if true else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="with --folders: the image folder (--plant uses the bundled sample)")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--plant", action="store_true", help="plant copies into the collection")
    truth.add_argument("--folders", action="store_true", help="each class folder holds copies of one photo")
    parser.add_argument("--exact", type=int, default=30, help="byte-identical copies to plant")
    parser.add_argument("--near", type=int, default=30, help="edited copies to plant per strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--run-arg", action="append", default=[], help="extra `lookalike run` argument")
    parser.add_argument(
        "--artifacts-root",
        type=Path,
        help="with --folders: a root where `lookalike run` already built the index for "
        "these settings; it is only read (no run)",
    )
    parser.add_argument("--linkage", default="leader", choices=("leader", "components"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="lookalike-duplicates-"))
    root = work / "artifacts"
    record: dict = {"truth": "planted" if args.plant else "folders"}
    if args.plant:
        if args.dataset is not None:
            raise SystemExit("--plant writes the bundled sample into a fresh folder: leave --dataset out")
        folder = work / "collection"
        paths = write_sample(folder, work)
        pairs = plant(paths, args.exact, args.near, args.seed)
        record["collection"] = f"the bundled sample's {len(paths)} train images"
        record["planted"] = {kind: len(p) for kind, p in pairs.items()}
    else:
        folder = Path(args.dataset)
        record["collection"] = str(folder)
    if args.artifacts_root and args.plant:
        raise SystemExit("--artifacts-root reads an index already built for --folders; --plant builds its own")
    root = args.artifacts_root or root
    where = ["--dataset", str(folder), "--artifacts-root", str(root), *args.run_arg]
    summary, run_seconds = {}, None
    if not args.artifacts_root:
        summary, run_seconds = lookalike("run", *where, "--set", "tracking.mode=disabled", "--no-promote", "--json")
    report, dup_seconds = lookalike("duplicates", *where, "--linkage", args.linkage, "--json")
    found, groups = reported_pairs(report)

    if args.plant:
        by_kind = {kind: {frozenset(p) for p in pairs[kind]} for kind in pairs}
        true = set().union(*by_kind.values())
        record["pairs"] = score(found, true)
        record["recall_by_kind"] = {kind: score(found, t)["recall"] for kind, t in by_kind.items()}
        planted_files = {p for pair in true for p in pair}
        record["groups_without_planted_files"] = sum(1 for g in groups if not planted_files & set(g))
        record["images_in_those_groups"] = sum(len(g) for g in groups if not planted_files & set(g))
    else:
        by_folder = defaultdict(list)
        for path in folder.rglob("*"):
            if path.is_file():
                by_folder[path.parent].append(str(path))
        true = {frozenset(p) for files in by_folder.values() for p in itertools.combinations(sorted(files), 2)}
        record["pairs"] = score(found, true)
        record["groups_within_one_folder"] = sum(1 for g in groups if len({Path(p).parent for p in g}) == 1)
    record.update(
        {
            "linkage": args.linkage,
            "threshold": report["threshold"],
            "threshold_why": report["threshold_why"],
            "calibration": report["calibration"],
            "n_images": report["n_images"],
            "n_groups": report["n_groups"],
            "n_exact_groups": report["n_exact_groups"],
            "n_near_groups": report["n_near_groups"],
            "n_images_in_groups": report["n_images_in_groups"],
            "largest_group": max((len(g) for g in groups), default=0),
            "encoder_steps": (summary.get("encoder") or {}).get("steps"),
            "index": report["index"],
            "stage_keys": {name: s["key"] for name, s in summary.get("stages", {}).items()},
            "evaluation_duplicates": summary.get("duplicates"),
            "run_seconds": round(run_seconds, 1) if run_seconds else None,
            "duplicates_seconds": round(dup_seconds, 1),
        }
    )
    emit(record, args.out)


if __name__ == "__main__":
    main()
