"""What `dataset.max_side` buys on camera-sized JPEGs: bytes stored, stage seconds, and how close the vectors stay.

    .venv/bin/python benchmarks/max_side.py --folder /data/camera-10k --limit 2000 --sides 512 1024 \
        --out benchmarks/results/max_side_camera_2k.json

For the originals and for each `--sides` value, in a fresh artifacts root: the dataset stage (its defaults:
`dataset.num_workers=auto`), a random-init encoder of the default recipe (`encoder.steps=0`: the same seeded
weights in every root, checked), and the embeddings stage (its defaults: draft decoding on every core). Recorded per
variant: the dataset stage's seconds and the bytes its parts hold, the embeddings stage's seconds and images/s.
Then, against the originals' vectors (same weights, rows matched by row id): the mean cosine similarity of each
image's two vectors, and the share of each image's 10 nearest neighbours (exact L2) the two runs agree on. A later
version of a collection stored bounded reads only the bounded bytes again; the originals stay at their paths.

`--limit N` measures on the first N files (hard-linked into a subset folder, as decode_rate.py does).
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
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402
from decode_rate import camera_files  # noqa: E402

# run in a subprocess per variant (its own imports and decode workers, as a run has): dataset, encoder, embeddings
STAGES = """
import json, sys, time
from pathlib import Path
from lookalike.core.settings import load_settings
from lookalike.stages.dataset.stage import run_dataset_stage
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.stage import run_encoder_stage

if __name__ == "__main__":
    root, source, overrides = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    settings = load_settings({"artifacts_root": str(root), "dataset.source": source, "encoder.steps": 0,
                              "embeddings.reuse": False, **overrides})
    t = time.perf_counter()
    dataset = run_dataset_stage(settings.dataset, root)
    dataset_seconds = time.perf_counter() - t
    encoder = run_encoder_stage(settings.encoder, dataset.manifest, root).manifest
    t = time.perf_counter()
    embeddings = run_embeddings_stage(settings.embeddings, dataset.manifest, encoder, root).manifest
    seconds = time.perf_counter() - t
    print(json.dumps({
        "dataset": {"seconds": round(dataset_seconds, 2), "n_images": dataset.manifest.stats["n_images"],
                    "part_bytes": dataset.manifest.stats["storage"]["bytes_written"]},
        "encoder": {"key": encoder.key, "spec": {k: encoder.stats["spec"][k] for k in ("architecture", "input_size")}},
        "embeddings": {"seconds": round(seconds, 2), "images_per_second": round(dataset.manifest.stats["n_images"]
                       / seconds, 1), "decode_workers": embeddings.stats.get("decode_workers", 0),
                       "key": embeddings.key},
    }))
"""


def run_variant(root: Path, source: Path, overrides: dict) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    before = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, "-c", STAGES, str(root), str(source), json.dumps(overrides)],
        env={**os.environ, "WANDB_MODE": "disabled"},
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"stages failed with {overrides}:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {**out, "load_average": [round(before, 1), round(os.getloadavg()[0], 1)]}


def vectors(root: Path) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(row ids, vectors in row-id order, the encoder's weights file bytes) of the one chain under `root`."""
    from lookalike.core.manifest import find_manifest
    from lookalike.stages.embeddings.shards import load_embeddings

    (key,) = [p.name for p in (root / "embeddings").iterdir() if p.is_dir()]
    manifest = find_manifest(root, "embeddings", key)
    raw, ids = load_embeddings(root, manifest)
    order = np.argsort(ids)
    weights = (root / "encoder" / manifest.inputs["encoder"] / "encoder.pt").read_bytes()
    return ids[order], raw[order], weights


def agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict:
    """Mean row-wise cosine of two aligned vector sets, and the mean overlap of their k nearest neighbours."""
    import faiss

    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    cosine = (na * nb).sum(1)
    neighbours = []
    for x in (a, b):
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(np.ascontiguousarray(x, dtype=np.float32))
        neighbours.append(index.search(np.ascontiguousarray(x, dtype=np.float32), k + 1)[1][:, 1:])
    overlap = np.mean([len(set(p) & set(q)) / k for p, q in zip(*neighbours)])
    return {
        "mean_cosine": round(float(cosine.mean()), 4),
        "min_cosine": round(float(cosine.min()), 4),
        f"neighbour_overlap_at_{k}": round(float(overlap), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path("/data/camera-10k"))
    ap.add_argument("--limit", type=int, help="the first N files only")
    ap.add_argument("--sides", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-max-side")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--note", default="", help="recorded as is (e.g. that the machine was shared)")
    args = ap.parse_args(argv)

    files, _, source = camera_files(args.folder, args.limit, args.work_dir)
    record: dict = {
        "benchmark": "max_side",
        "folder": str(args.folder),
        "images": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
        "note": args.note,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "variants": {},
    }
    roots = {"originals": args.work_dir / "originals"}
    record["variants"]["originals"] = run_variant(roots["originals"], source, {})
    print("originals", record["variants"]["originals"], file=sys.stderr)
    for side in args.sides:
        name = f"max_side={side}"
        roots[name] = args.work_dir / f"max-side-{side}"
        record["variants"][name] = run_variant(roots[name], source, {"dataset.max_side": side})
        print(name, record["variants"][name], file=sys.stderr)
    ids, reference, weights = vectors(roots["originals"])
    full = record["variants"]["originals"]
    for side in args.sides:
        name = f"max_side={side}"
        other_ids, other, other_weights = vectors(roots[name])
        if not np.array_equal(ids, other_ids) or other_weights != weights:
            sys.exit(f"{name}: not the same rows or not the same seeded weights as the originals' run")
        variant = record["variants"][name]
        variant["against_originals"] = {
            **agreement(reference, other),
            "part_bytes": round(variant["dataset"]["part_bytes"] / full["dataset"]["part_bytes"], 4),
            "dataset_seconds": round(variant["dataset"]["seconds"] / full["dataset"]["seconds"], 3),
            "embeddings_seconds": round(variant["embeddings"]["seconds"] / full["embeddings"]["seconds"], 3),
        }
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
