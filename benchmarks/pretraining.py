"""Pretraining: images/s per method, and how good a CPU recipe gets on Fashion-MNIST in 30 minutes.

Two parts, both through the product's own `encoder` stage (`lookalike.stages.encoder.stage.run_encoder_stage`):

1. `throughput`: every method (dino, simclr, byol) for `--throughput-epochs` epochs on the bundled
   sample with the default settings (only the method changes). images/s is the stage's own
   `images_per_second` stat: images x epochs / seconds inside the epochs (data loading,
   augmentation, forward, backward, optimiser; not process start or checkpoint export).
2. `recipe`: Fashion-MNIST from Debian's `dataset-fashion-mnist` package, written once in the HF
   parquet layout by `lib/lookalike/data/make_sample.py` (all 60,000 train and 10,000 test images). The encoder
   stage pretrains on the 60k train split with the default settings, or `--set` overrides, and
   after every `--probe-every` epochs (and the last) the encoder as it would be exported embeds
   train and test the way the `embeddings` stage does (`ResizeToTensor`, `normalize_batch`,
   `embed_batch`). kNN@10 is the majority label of the 10 nearest train images (ties to the
   nearest), under L2 (`flat-l2`, the default index) and cosine (`flat-ip`), on the 10k test
   images. Probe time is not counted as pretraining time. Baselines in the same run: raw pixels
   (784-d) and the same backbone with random weights (`epochs=0`).

Usage (needs `apt-get install dataset-fashion-mnist`):
    .venv/bin/python benchmarks/pretraining.py throughput [--throughput-epochs 1] [--out FILE]
    .venv/bin/python benchmarks/pretraining.py recipe [--set encoder.epochs=9 ...] [--probe-every 2] [--out FILE]

Writes a JSON record (and prints it); the recorded outputs live in benchmarks/results/.
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
from datetime import date
from pathlib import Path

from _record import emit
from index_presets import knn_accuracy as vote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lookalike.core.settings import METHOD_NAMES, load_settings  # noqa: E402
from lookalike.stages.dataset.stage import run_dataset_stage  # noqa: E402
from lookalike.stages.dataset.torch_data import ResizeToTensor  # noqa: E402
from lookalike.stages.encoder.checkpoint import EncoderSpec  # noqa: E402
from lookalike.stages.encoder.stage import resolve, run_encoder_stage  # noqa: E402
from lookalike.stages.inference import embed_batch, normalize_batch

SOURCE = Path("/usr/share/datasets/fashion-mnist")
K = 10


def machine() -> dict:
    import lightly

    return {
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightly": lightly.__version__,
        "faiss": faiss.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key if "." in key else f"encoder.{key}"] = value
    return out


def throughput(args) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for method in METHOD_NAMES:
            settings = load_settings(
                {**parse_sets(args.set), "encoder.method": method, "encoder.epochs": args.throughput_epochs}
            )
            dataset = run_dataset_stage(settings.dataset, root).manifest
            started = time.perf_counter()
            result = run_encoder_stage(settings.encoder, dataset, root)
            stats = result.manifest.stats
            rows[method] = {
                "images_per_second": stats["images_per_second"],
                "epoch_seconds": stats["epoch_seconds"],
                "n_images": stats["n_images"],
                "stage_seconds": round(time.perf_counter() - started, 1),
                "encoder": settings.encoder.model_dump(mode="json"),
            }
            print(method, rows[method]["images_per_second"], "img/s", flush=True)
    return {"benchmark": "pretraining-throughput", **machine(), "methods": rows}


# ---------------------------------------------------------------- recipe on Fashion-MNIST


def fashion_mnist(work: Path) -> Path:
    """The whole of Fashion-MNIST in the HF parquet layout, written once by lib/lookalike/data/make_sample.py."""
    folder = work / "fashion-mnist-full"
    if not (folder / "data").is_dir():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "lib" / "lookalike" / "data" / "make_sample.py"),
                "--source",
                str(SOURCE),
                "--out",
                str(folder),
                "--train-per-class",
                "6000",
                "--test-per-class",
                "1000",
            ],
            check=True,
        )
    return folder


def decoded(snapshot) -> tuple[list[Image.Image], np.ndarray]:
    import io

    images = [Image.open(io.BytesIO(b["bytes"])).convert("RGB") for b in snapshot["image"]]
    return images, np.asarray(snapshot["label"])


def embed_images(
    model: torch.nn.Module, spec: EncoderSpec, images: list[Image.Image], batch_size: int = 512
) -> np.ndarray:
    device = next(model.parameters()).device
    fit = ResizeToTensor(spec.input_size)
    model = model.to(memory_format=torch.channels_last).eval()
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([fit(im) for im in images[i : i + batch_size]])
        x = normalize_batch(batch, spec, device).contiguous(memory_format=torch.channels_last)
        out.append(embed_batch(model, x, device))
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def knn_accuracy(db: np.ndarray, db_labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, cosine: bool) -> float:
    """kNN@10 under L2 or cosine, voted as index_presets.py votes (ties to the nearest)."""
    if cosine:
        db, queries = db.copy(), queries.copy()
        faiss.normalize_L2(db)
        faiss.normalize_L2(queries)
    index = faiss.IndexFlatIP(db.shape[1]) if cosine else faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    _, found = index.search(queries, K)
    return round(float(vote(found, db_labels, truth)), 4)


def scores(model, spec, train, test) -> dict:
    started = time.perf_counter()
    db, q = embed_images(model, spec, train[0]), embed_images(model, spec, test[0])
    return {
        "knn_at_10_l2": knn_accuracy(db, train[1], q, test[1], cosine=False),
        "knn_at_10_cosine": knn_accuracy(db, train[1], q, test[1], cosine=True),
        "probe_seconds": round(time.perf_counter() - started, 1),
    }


def recipe(args) -> dict:
    work = Path(args.work)
    source = fashion_mnist(work)
    root = work / "artifacts"
    sets = {"dataset.source": str(source), **parse_sets(args.set)}
    settings = load_settings({**sets, "dataset.split": "train"})
    test_settings = load_settings({**sets, "dataset.split": "test"})
    from lookalike.stages.dataset.stage import open_snapshot

    train_manifest = run_dataset_stage(settings.dataset, root).manifest
    test_manifest = run_dataset_stage(test_settings.dataset, root).manifest
    train, test = decoded(open_snapshot(root, train_manifest)), decoded(open_snapshot(root, test_manifest))
    print(f"Fashion-MNIST: {len(train[0])} train, {len(test[0])} test", flush=True)

    pixels = lambda split: np.stack([np.asarray(im.convert("L"), dtype=np.float32).ravel() / 255 for im in split[0]])  # noqa: E731
    db, queries = pixels(train), pixels(test)
    raw = {
        "knn_at_10_l2": knn_accuracy(db, train[1], queries, test[1], cosine=False),
        "knn_at_10_cosine": knn_accuracy(db, train[1], queries, test[1], cosine=True),
    }
    print("raw pixels", raw, flush=True)

    from lookalike.stages.encoder.checkpoint import load_encoder

    def random_init(overrides: dict) -> tuple[dict, EncoderSpec]:
        length = {k: v for k, v in {**sets, **overrides}.items() if k not in ("encoder.epochs", "encoder.steps")}
        section = load_settings({**length, "encoder.steps": 0}).encoder
        model, spec = load_encoder(root, run_encoder_stage(section, train_manifest, root).manifest)
        row = {
            "backbone": section.backbone,
            "width": section.width,
            "input_size": section.input_size,
            "feature_dim": spec.feature_dim,
            **scores(model, spec, train, test),
        }
        print("random init", row, flush=True)
        return row, spec

    own, spec = random_init({})  # the recipe's backbone; its spec feeds the probes
    baselines = {"raw_pixels": raw, "random_init": own}
    for extra in args.random_baseline:
        name, _, size = extra.partition("@")
        baselines[f"random_init {extra}"] = random_init(
            {"encoder.backbone": name, "encoder.width": 1.0, "encoder.input_size": int(size or 32)}
        )[0]

    section, why, plan = resolve(settings.encoder, train_manifest)  # auto settings and the step budget, resolved
    print(f"recipe: {plan.steps} steps ({plan.why}); {why}", flush=True)
    curve, minutes = [], [0.0]

    def on_epoch(epoch: int, epochs: int, loss: float, seconds: float) -> None:
        minutes.append(minutes[-1] + seconds / 60)
        print(f"epoch {epoch}/{epochs}: loss {loss:.4f}, {seconds:.1f} s", flush=True)

    def probe(epoch: int, encoder: torch.nn.Module) -> None:
        if epoch % args.probe_every and epoch != plan.epochs:
            return
        row = {"epoch": epoch, "pretrain_minutes": round(minutes[-1], 2), **scores(encoder, spec, train, test)}
        curve.append(row)
        print("probe", row, flush=True)
        with open(work / "curve.jsonl", "a") as fh:  # survives a stopped run
            fh.write(json.dumps({"encoder": section.model_dump(mode="json"), **row}) + "\n")

    started = time.perf_counter()
    result = run_encoder_stage(section, train_manifest, root, on_epoch=on_epoch, probe=probe)
    stats = result.manifest.stats
    best = max(curve, key=lambda r: max(r["knn_at_10_l2"], r["knn_at_10_cosine"])) if curve else None
    return {
        "benchmark": "pretraining-recipe",
        **machine(),
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "n_train": len(train[0]),
        "n_test": len(test[0]),
        "encoder": section.model_dump(mode="json"),
        "recipe": why,
        "steps": plan.steps,
        "pretrain_minutes": round(sum(stats["epoch_seconds"]) / 60, 2),
        "images_per_second": stats["images_per_second"],
        "stage_seconds_with_probes": round(time.perf_counter() - started, 1),
        "losses": stats["losses"],
        "baselines": baselines,
        "curve": curve,
        "final": curve[-1] if curve else None,
        "best": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["throughput", "recipe"])
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="settings overrides, e.g. encoder.epochs=9 (a bare key means encoder.KEY)",
    )
    parser.add_argument("--throughput-epochs", type=int, default=1)
    parser.add_argument("--probe-every", type=int, default=1, help="probe kNN@10 every N epochs (and after the last)")
    parser.add_argument(
        "--random-baseline",
        nargs="*",
        default=["resnet18@32"],
        metavar="BACKBONE@SIZE",
        help="extra random-init baselines (torchvision backbones)",
    )
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "lookalike-bench-pretraining"),
        help="where the Fashion-MNIST parquet and the artifacts go (kept between runs)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    emit(throughput(args) if args.part == "throughput" else recipe(args), args.out)


if __name__ == "__main__":
    main()
