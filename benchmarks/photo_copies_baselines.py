"""Baselines on the photo-copies collection (see PHOTO_COPIES.md): lookalike's own numbers plus an
independent raw-pixel check, written to one JSON record.

    .venv/bin/python benchmarks/make_photo_copies.py --out /tmp/photo-copies
    .venv/bin/python benchmarks/photo_copies_baselines.py --dataset /tmp/photo-copies \\
        --artifacts-root /tmp/photo-art --default-run --out benchmarks/results/photo_copies_baselines.json

It runs, from the system temp folder (so no project `.env` is read):

- `lookalike run --dataset D --epochs 0 --artifacts-root A --json --set tracking.mode=disabled`:
  the untrained encoder, whose `baselines` give the pixel baseline (fitted to 28 px, the encoder's
  input size) and the `init` baseline;
- with `--default-run`, the same without `--epochs 0`: the default recipe (SimCLR, 15 epochs);

and parses each `--json` summary (its last stdout line). The folder has no test split, so the
protocol is leave-one-out: every image is a query and its own row is left out of its neighbours.

Independently of lookalike, it also scores raw pixels at 16, 28 and 32 px the same way
(each image `ImageOps.fit` to a square with bilinear resampling, as lookalike's pixel baseline
does; values in [0, 1], exact L2 search with FAISS, own row dropped), so the 28 px figure can be
checked against lookalike's. Stages already computed in the artifacts root report `cached`; the
pretraining time is read from the encoder's manifest either way.
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
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

K = 10


def lookalike_run(lookalike: str, dataset: Path, root: Path, epochs: int | None) -> dict:
    cmd = [lookalike, "run", "--dataset", str(dataset)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    cmd += ["--artifacts-root", str(root), "--json", "--set", "tracking.mode=disabled"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    encoder_dir = Path(summary["artifacts"]["encoder"]).parent
    manifest = json.loads((encoder_dir / "manifest.json").read_text())
    stats = manifest.get("stats", {})
    metrics = summary["metrics"]
    return {
        "command": f"cd {tempfile.gettempdir()} && " + " ".join(cmd),
        "wall_seconds": round(wall, 1),
        "stages": {
            name: {"key": s["key"], "status": s["status"], "seconds": s["seconds"]}
            for name, s in summary["stages"].items()
        },
        "encoder": {
            "settings": manifest.get("settings"),
            "pretraining_seconds": manifest.get("timings", {}).get("build_seconds"),
            "pretraining_minutes": round(manifest.get("timings", {}).get("build_seconds", 0.0) / 60, 2),
            "epoch_seconds": stats.get("epoch_seconds"),
            "losses": [round(x, 4) for x in stats.get("losses", [])],
            "created": manifest.get("created"),
        },
        "index": summary.get("index", {}).get("type"),
        "metrics": {k: v for k, v in metrics.items() if k != "per_class"},
        "baselines": summary.get("baselines"),
        "gain": summary.get("gain"),
        "promotion_reasons": (summary.get("promotion") or {}).get("reasons"),
    }


def folder_images(root: Path) -> tuple[list[Path], list[str]]:
    """The images of an imagefolder with their class (subfolder) names, in a fixed order."""
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.glob("*.jpg")):
            paths.append(path)
            labels.append(folder.name)
    return paths, labels


def pixel_scores(paths: list[Path], labels: list[str], side: int, k: int = K) -> dict:
    import faiss
    from PIL import Image, ImageOps

    vecs = np.stack(
        [
            np.asarray(
                ImageOps.fit(Image.open(p).convert("RGB"), (side, side), Image.Resampling.BILINEAR), np.float32
            ).ravel()
            / 255.0
            for p in paths
        ]
    )
    index = faiss.IndexFlatL2(vecs.shape[1])
    index.add(vecs)
    _, ids = index.search(vecs, k + 1)
    counts = Counter(labels)
    knn, precision, ap = [], [], []
    for q, row in enumerate(ids):
        found = [labels[r] for r in row if r != q][:k]
        truth = labels[q]
        votes = Counter(found)
        best = max(votes.values())
        knn.append(next(lab for lab in found if votes[lab] == best) == truth)
        rel = [lab == truth for lab in found]
        precision.append(sum(rel) / len(found))
        hits, total = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                hits += 1
                total += hits / rank
        ap.append(total / min(k, counts[truth] - 1))
    return {
        "what": f"pixels {side}x{side}",
        "knn_accuracy": round(float(np.mean(knn)), 6),
        f"precision_at_{k}": round(float(np.mean(precision)), 6),
        f"map_at_{k}": round(float(np.mean(ap)), 6),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("/tmp/photo-copies"))
    ap.add_argument("--artifacts-root", type=Path, default=Path("/tmp/photo-art"))
    ap.add_argument("--default-run", action="store_true", help="also run the default recipe (pretrains; minutes)")
    ap.add_argument("--lookalike", default=str(Path(sys.executable).with_name("lookalike")))
    ap.add_argument("--note", action="append", default=[], help="free text added to the record (repeatable)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    dataset = args.dataset.resolve()
    provenance = json.loads((dataset / ".photo_copies.json").read_text())
    record: dict = {
        "benchmark": "photo_copies_baselines",
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "lookalike_git_head": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True
        ).stdout.strip(),
        "dataset": {
            "path": str(dataset),
            "build_command": ".venv/bin/python benchmarks/make_photo_copies.py --cache /tmp/photo-copies-cache --out /tmp/photo-copies",
            "tree_sha256": provenance["tree_sha256"],
            "n_classes": provenance["n_classes"],
            "images_per_class": provenance["images_per_class"],
            "n_images": provenance["n_images"],
            "sources_by_package": provenance["sources_by_package"],
        },
        "protocol": "leave-one-out (no test split): every indexed image is a query, its own row left out; k = 10",
    }
    record["untrained"] = lookalike_run(args.lookalike, dataset, args.artifacts_root.resolve(), epochs=0)
    if args.default_run:
        record["default"] = lookalike_run(args.lookalike, dataset, args.artifacts_root.resolve(), epochs=None)
    paths, labels = folder_images(dataset)
    record["independent_pixels"] = {
        "how": "numpy/faiss outside lookalike: ImageOps.fit bilinear to side x side, /255, IndexFlatL2, own row dropped",
        "n_images": len(paths),
        "scores": [pixel_scores(paths, labels, side) for side in (16, 28, 32)],
    }
    record["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.note:
        record["notes"] = args.note
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
