"""Quality per minute of pretraining: one encoder recipe's leave-one-out curve on a labelled collection.

Trains the product's own `encoder` stage (`run_encoder_stage`) on `--dataset` with the default
settings or `--set` overrides, and every `--probe-every` epochs (and after the last) embeds the
whole collection with the encoder as it would be exported (`Embedder`, the one inference path) and
scores leave-one-out retrieval exactly as the `evaluation` stage does (`label_metrics`: kNN@10,
precision@10, mAP@10) under L2 and cosine (`flat-ip`) on the raw vectors, and as the default index
searches them (`whitened`: `flat-l2` behind `index.whitening`). Probe time is
not pretraining time. The raw-pixel and starting-point baselines are scored on the same queries
first. Each probe is appended to `--curve` as it happens, so a stopped run keeps what it measured.

Usage:
    .venv/bin/python benchmarks/recipe_curve.py --dataset /tmp/photo-copies [--set encoder.steps=600 ...]
        [--probe-every 10] [--curve FILE.jsonl] [--out FILE.json] [--note "what changed"]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _record import emit  # noqa: E402

from lookalike.core.settings import load_settings  # noqa: E402
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage  # noqa: E402
from lookalike.stages.dataset.torch_data import ResizeToTensor, SnapshotImages  # noqa: E402
from lookalike.stages.encoder.stage import resolve, run_encoder_stage  # noqa: E402
from lookalike.stages.encoder.training import build_training_method, encoder_spec  # noqa: E402
from lookalike.stages.evaluation.baselines import exact_neighbours, pixel_side  # noqa: E402
from lookalike.stages.evaluation.metrics import scores  # noqa: E402
from lookalike.stages.evaluation.stage import _label_names  # noqa: E402
from lookalike.stages.inference import Embedder  # noqa: E402

K = 10


def parse_sets(values: list[str]) -> dict[str, str]:
    return dict(value.split("=", 1) for value in values)


def fitted(snapshot, side: int) -> torch.Tensor:
    """Every image decoded once and fitted to side x side: (n, side, side, 3) uint8."""
    loader = torch.utils.data.DataLoader(SnapshotImages(snapshot, ResizeToTensor(side)), batch_size=512)
    return torch.cat(list(loader))


def leave_one_out(
    vectors: np.ndarray, row_ids: np.ndarray, truths: list, label_of: dict, metric: str, whitening: float = 0.0
) -> dict:
    ids = exact_neighbours(vectors, row_ids, vectors, metric, K + 1, whitening)  # normalises for ip itself
    found = scores(ids, row_ids, truths, label_of, K, leave_one_out=True)
    return {m: found[m] for m in ("knn_accuracy", f"precision_at_{K}", f"map_at_{K}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--set", action="append", default=[], help="section.field=value, as `lookalike run --set`")
    parser.add_argument("--probe-every", type=int, default=10, help="epochs between probes (and after the last)")
    parser.add_argument("--root", default=None, help="artifacts root (default: a new temporary folder)")
    parser.add_argument("--curve", type=Path, help="append each probe to this JSON-lines file")
    parser.add_argument("--note", default="", help="what this probe changes, recorded with it")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--temperature", type=float, help="probe only: simclr's NT-Xent temperature (not a setting; not in the key)"
    )
    args = parser.parse_args()
    if args.temperature:
        from lightly.loss import NTXentLoss

        from lookalike.stages.encoder.methods import simclr

        simclr.NTXentLoss = lambda **kw: NTXentLoss(**{**kw, "temperature": args.temperature})

    root = Path(args.root or tempfile.mkdtemp(prefix="recipe-curve-"))
    sets = {"dataset.source": args.dataset, "artifacts_root": str(root), **parse_sets(args.set)}
    settings = load_settings(sets)
    dataset = run_dataset_stage(settings.dataset, root).manifest
    snapshot = open_snapshot(root, dataset)
    names = _label_names(snapshot, dataset)
    row_ids = np.asarray(snapshot["row_id"], dtype=np.int64)
    label_of = dict(zip(map(int, row_ids), names))
    truths = [label_of[int(r)] for r in row_ids]
    section = settings.encoder
    resolved, why, plan = resolve(section, dataset, root)  # what the stage trains: auto settings chosen from the data
    print(f"{args.dataset}: {len(row_ids)} images; encoder {resolved.model_dump(mode='json')}", flush=True)

    side = pixel_side(resolved.input_size)
    pixels = fitted(snapshot, side).reshape(len(row_ids), -1).float().div_(255).numpy()
    images = fitted(snapshot, resolved.input_size)

    def embed(model: torch.nn.Module) -> np.ndarray:
        embedder = Embedder.from_model(copy.deepcopy(model), encoder_spec(resolved, dim))
        return np.concatenate([embedder.embed_pixels(images[i : i + 512]) for i in range(0, len(images), 512)])

    method, dim = build_training_method(resolved, plan, root)
    whitening = settings.index.whitening

    def measured(vectors: np.ndarray) -> dict:
        out = {m: leave_one_out(vectors, row_ids, truths, label_of, m) for m in ("l2", "ip")}
        return {**out, "whitened": leave_one_out(vectors, row_ids, truths, label_of, "l2", whitening)}

    baselines = {f"pixels {side}x{side}": measured(pixels), "init": measured(embed(method.encoder()))}
    del method
    print("baselines", json.dumps(baselines), flush=True)

    curve, seconds, steps = [], [0.0], [0]
    per_epoch = plan.steps_per_epoch

    def on_epoch(epoch: int, epochs: int, loss: float, took: float) -> None:
        seconds.append(seconds[-1] + took)
        steps.append(min(steps[-1] + per_epoch, plan.steps))

    def probe(epoch: int, encoder: torch.nn.Module) -> None:
        last = epoch == plan.epochs
        if epoch % args.probe_every and not last:
            return
        vectors = embed(encoder)
        row = {
            "epoch": epoch,
            "steps": steps[-1],
            "pretrain_seconds": round(seconds[-1], 1),
            **measured(vectors),
        }
        curve.append(row)
        print("probe", json.dumps(row), flush=True)
        if args.curve:
            args.curve.parent.mkdir(parents=True, exist_ok=True)
            with open(args.curve, "a") as fh:
                fh.write(json.dumps({"dataset": args.dataset, "sets": args.set, "note": args.note, **row}) + "\n")

    started = time.perf_counter()
    result = run_encoder_stage(section, dataset, root, on_epoch=on_epoch, probe=probe)
    stats = result.manifest.stats
    emit(
        {
            "benchmark": "recipe_curve",
            "date": date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
            + (f", {torch.cuda.get_device_name(0)}, torch {torch.__version__}" if torch.cuda.is_available() else ""),
            "dataset": args.dataset,
            "n_images": len(row_ids),
            "sets": args.set,
            "note": args.note,
            "whitening": whitening,
            "encoder": resolved.model_dump(mode="json"),
            "recipe": why,
            "steps": stats.get("steps"),
            "pretrain_seconds": round(sum(stats["epoch_seconds"]), 1),
            "stage_seconds_with_probes": round(time.perf_counter() - started, 1),
            "baselines": baselines,
            "curve": curve,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
