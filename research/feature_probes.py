"""What a trained encoder's features are worth read out differently: pooling and test-time flips.

Loads a finished encoder (`encoder.pt` of a lookalike encoder stage, a small-image ResNet), embeds
a labelled image folder several ways and scores each leave-one-out exactly as the evaluation stage
does (`exact_neighbours` + `scores`, k=10, L2 behind the index's whitening rule), beside raw pixels
on the same queries. No training: each variant is a different read-out of the same weights.

Variants:
    avg         the product's read-out: the last block's map, average-pooled (what is indexed today)
    avg+flip    the mean of the image's and its mirror image's `avg` vectors
    grid2+flip  the same for `grid2` (the mirror's cells where they fall)
    grid2+mirror  `grid2` of the mean of the image's map and its mirror image's map mirrored back
    gem3        generalised-mean pooling, p=3, of the last block's map
    avg+max     average- and max-pooled last map, concatenated
    l3+l4       the third and the last block's maps, each average-pooled, concatenated
    grid2       the last block's map average-pooled on a 2x2 grid (4x the dimensions)
    grid3       the same on 3x3 cells (overlapping 2x2 windows of a 4x4 map): pooling=grid's default

Usage:
    .venv/bin/python research/feature_probes.py --dataset /tmp/fashion-mnist/test \
        --encoder /tmp/root/encoder/<key>/encoder.pt --out research/results/feature_probes_fashion_mnist_10k.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # _record and recipe_curve, shared with the benchmarks

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _record import emit  # noqa: E402
from recipe_curve import fitted, leave_one_out  # noqa: E402

from lookalike.core.settings import load_settings  # noqa: E402
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage  # noqa: E402
from lookalike.stages.encoder.checkpoint import load_encoder_file  # noqa: E402
from lookalike.stages.evaluation.baselines import pixel_side  # noqa: E402
from lookalike.stages.evaluation.stage import _label_names  # noqa: E402
from lookalike.stages.inference import normalize_batch  # noqa: E402


def maps(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The third and the last block's activation maps of a SmallImageResNet."""
    out = torch.relu(net.bn1(net.conv1(x)))
    l3 = net.layer3(net.layer2(net.layer1(out)))
    return l3, net.layer4(l3)


def readouts(l3: torch.Tensor, l4: torch.Tensor) -> dict[str, torch.Tensor]:
    avg = l4.mean((2, 3))
    return {
        "avg": avg,
        "gem3": l4.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3),
        "avg+max": torch.cat([avg, l4.amax((2, 3))], 1),
        "l3+l4": torch.cat([l3.mean((2, 3)), avg], 1),
        "grid2": grid(l4, 2),
        "l3+grid2": torch.cat([l3.mean((2, 3)), grid(l4, 2)], 1),
        "grid2+grid2": torch.cat([grid(l3, 2), grid(l4, 2)], 1),
        "grid3": grid(l4, 3),
        "grid4": grid(l4, 4),
        "grid1+2": torch.cat([avg, grid(l4, 2)], 1),
    }


def grid(x: torch.Tensor, cells: int) -> torch.Tensor:
    """The map average-pooled on a cells x cells grid, flattened."""
    return torch.nn.functional.adaptive_avg_pool2d(x, cells).flatten(1)


def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, spec) -> None:
    """Replace every BatchNorm's running mean and variance (estimated during training on augmented
    views) by their averages over the collection's own fitted images."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over every batch below
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 256):
            model(normalize_batch(images[i : i + 256], spec, torch.device("cpu")))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--encoder", type=Path, required=True, help="a lookalike encoder.pt (small-image ResNet)")
    parser.add_argument("--whitening", type=float, nargs="*", default=[0.0, 0.5, 1.0])
    parser.add_argument(
        "--bn-clean",
        action="store_true",
        help="first re-estimate BatchNorm's running statistics on the collection's un-augmented images",
    )
    parser.add_argument("--only", nargs="*", help="score only these variants (and pixels)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="feature-probes-"))
    settings = load_settings({"dataset.source": args.dataset, "artifacts_root": str(root)})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    snapshot = open_snapshot(root, dataset)
    row_ids = np.asarray(snapshot["row_id"], dtype=np.int64)
    label_of = dict(zip(map(int, row_ids), _label_names(snapshot, dataset)))
    truths = [label_of[int(r)] for r in row_ids]

    model, spec = load_encoder_file(args.encoder)
    images = fitted(snapshot, spec.input_size)
    side = pixel_side(spec.input_size)
    if args.bn_clean:
        recalibrate_batchnorm(model, images, spec)
    vectors: dict[str, list[np.ndarray]] = {}
    vectors["pixels"] = [fitted(snapshot, side).reshape(len(row_ids), -1).float().div_(255).numpy()]
    with torch.inference_mode():
        for i in range(0, len(images), 512):
            x = normalize_batch(images[i : i + 512], spec, torch.device("cpu"))
            plain = readouts(*maps(model, x))
            flipped = readouts(*maps(model, x.flip(3)))
            for name, v in plain.items():
                vectors.setdefault(name, []).append(v.numpy())
            vectors.setdefault("avg+flip", []).append(((plain["avg"] + flipped["avg"]) / 2).numpy())
            vectors.setdefault("grid2+flip", []).append(((plain["grid2"] + flipped["grid2"]) / 2).numpy())
            l3f, l4f = maps(model, x.flip(3))
            mirrored = readouts(l3f.flip(3), l4f.flip(3))  # the mirror image's maps, mirrored back
            vectors.setdefault("grid2+mirror", []).append(((plain["grid2"] + mirrored["grid2"]) / 2).numpy())

    results = {}
    for name, parts in vectors.items():
        if args.only and name not in {"pixels", *args.only}:
            continue
        v = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        results[name] = {"dim": int(v.shape[1])}
        for w in args.whitening:
            results[name][f"whitening {w:g}"] = leave_one_out(v, row_ids, truths, label_of, "l2", w)
        print(name, results[name], flush=True)
    emit(
        {
            "benchmark": "feature_probes",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "dataset": args.dataset,
            "encoder": str(args.encoder),
            "spec": spec.model_dump(mode="json"),
            "n_images": len(row_ids),
            "results": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
