"""Embedding throughput: the embeddings stage against a forward-only ceiling and a naive loop.

Three measurements of the same encoder on the same device, in one process, images/s each:

(a) pipeline: the real embeddings stage (`lookalike.stages.embeddings.stage.run_embeddings_stage`, reuse off, a fresh
    stage folder every repeat) end to end: encoder and snapshot loaded and verified, decode,
    resize, uint8 batches, batched normalisation, forward (channels_last, inference mode, AMP
    on CUDA), shard files and their markers written. images/s = rows / stage seconds.
(b) forward-only ceiling: the stage's model path (`inference_model`: batch norms folded, the
    stage's layout; `embed_batch`: inference mode, the same autocast) on preloaded,
    already-normalised, device-resident tensors in the stage's batch sizes.
    Nothing is decoded; what (a) adds to (b) is the input pipeline and the writes.
(c) naive baseline, the way a notebook writes it: a torch Dataset that PIL-decodes each image and
    applies torchvision `Compose([Resize, CenterCrop, ToTensor, Normalize])`, a default-collate
    DataLoader (same batch size and workers), NCHW eager forward under `torch.no_grad()` in
    float32, vectors collected in a list and saved with `np.save` at the end.

Each repeat runs (a), (b), (c) in turn, so drift on a shared machine hits them alike; the record
holds every repeat and the medians, (a)/(b) (goal >= 0.8) and (a)/(c) (goal >= 1.6). Before the
repeats, one untimed round of all three on a 512-image snapshot of the same source warms up
kernels, the DataLoader's worker start-up and the page cache.

Datasets: `sample` is the bundled 3,000-image sample (`dataset.source=sample`); `fashion-mnist`
is the 70,000 Fashion-MNIST images (train + test) from Debian's `dataset-fashion-mnist`,
written once as a parquet file under `--work-dir` and ingested by the real dataset stage.
The encoder is the current default (`lookalike.core.settings.load_settings()`, plus the
`--backbone/--width/--input-size` overrides) with random weights (`encoder.epochs=0`):
throughput does not depend on the weights.

Usage:
    .venv/bin/python benchmarks/embedding_throughput.py [--dataset sample|fashion-mnist|both] [--limit N]
        [--repeats 3] [--batch-size 256] [--num-workers 0] [--threads N] [--device auto|cpu|cuda]
        [--backbone NAME] [--width W] [--input-size PX] [--work-dir DIR] [--out FILE]
    # ResNet-50 at 224 px on a GPU:
    .venv/bin/python benchmarks/embedding_throughput.py --device cuda --backbone resnet50 --input-size 224 --num-workers 8

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from _embedding_setup import add_stage_arguments, dataset_source, describe_model, prepare_stages
from _record import emit

WARMUP_ROWS = 512
POOL_BATCHES = 8  # distinct preloaded batches (b) cycles through
NO_PIXEL_LIMIT = 1 << 62  # the snapshot holds only images that already decoded once


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["sample", "fashion-mnist", "both"], default="both")
    parser.add_argument("--limit", type=int, help="embed a seeded random subset of this many images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_stage_arguments(parser, "its artifacts/embeddings folder is deleted before every pipeline run")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


# Parsed only as a script: a DataLoader worker's forkserver imports this module as __mp_main__.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the stage picks cuda when it sees one

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from lookalike.stages.dataset.images import decode_rgb  # noqa: E402
from lookalike.stages.dataset.stage import open_snapshot  # noqa: E402
from lookalike.stages.dataset.torch_data import ResizeToTensor  # noqa: E402
from lookalike.stages.embeddings.shards import load_embeddings
from lookalike.stages.embeddings.stage import plan_shards, run_embeddings_stage, shard_batches
from lookalike.stages.encoder.checkpoint import load_encoder  # noqa: E402
from lookalike.stages.inference import embed_batch, inference_model, normalize_batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_pipeline(section, dataset, encoder, root: Path, device: torch.device) -> tuple[float, object]:
    """(a): seconds of one fresh embeddings stage, and its manifest."""
    shutil.rmtree(root / "embeddings", ignore_errors=True)
    sync(device)
    started = time.perf_counter()
    result = run_embeddings_stage(section, dataset, encoder, root)
    sync(device)
    seconds = time.perf_counter() - started
    assert result.status == "computed", result.status
    assert result.manifest.stats["images_embedded"] == dataset.stats["n_images"], result.manifest.stats
    return seconds, result.manifest


class ForwardOnly:
    """(b): the stage's model and batch sizes over preloaded, normalised, device-resident batches."""

    def __init__(self, section, dataset, encoder, root: Path, device: torch.device) -> None:
        self.device = device
        layout = torch.channels_last if section.channels_last else torch.contiguous_format
        model, spec = load_encoder(root, encoder)
        self.model = inference_model(model, device, section.channels_last)
        snapshot = open_snapshot(root, dataset)
        n = len(snapshot)
        shards = (n + section.shard_size - 1) // section.shard_size
        plans = plan_shards(list(range(shards)), n, section.shard_size, np.zeros(n, dtype=bool))
        self.sizes = [len(b) for b in shard_batches(plans, section.batch_size)]
        resize, first = ResizeToTensor(spec.input_size), self.sizes[0]  # no batch is larger than the first
        self.pool = []
        for start in range(0, n - first + 1, first)[:POOL_BATCHES]:
            rows = snapshot[start : start + first]["image"]
            batch = torch.stack([resize(decode_rgb(image["bytes"], NO_PIXEL_LIMIT)) for image in rows])
            self.pool.append(normalize_batch(batch, spec, device).contiguous(memory_format=layout))
        sync(device)

    def run(self) -> float:
        sync(self.device)
        started = time.perf_counter()
        for i, size in enumerate(self.sizes):
            x = self.pool[i % len(self.pool)]
            embed_batch(self.model, x if len(x) == size else x[:size], self.device)
        sync(self.device)
        return time.perf_counter() - started


class NaiveImages(Dataset):
    """Per-image PIL decode and a torchvision Compose, as a notebook writes it."""

    def __init__(self, snapshot, transform) -> None:
        self.snapshot, self.transform = snapshot, transform

    def __len__(self) -> int:
        return len(self.snapshot)

    def __getitem__(self, i: int) -> torch.Tensor:
        data = self.snapshot[i]["image"]["bytes"]
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB"))


def run_naive(section, dataset, encoder, root: Path, device: torch.device, out: Path) -> float:
    """(c): seconds from loading the model to the saved .npy."""
    sync(device)
    started = time.perf_counter()
    model, spec = load_encoder(root, encoder)
    model = model.to(device).eval()
    transform = transforms.Compose(
        [
            transforms.Resize(spec.input_size),
            transforms.CenterCrop(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    loader = DataLoader(
        NaiveImages(open_snapshot(root, dataset), transform),
        batch_size=section.batch_size,
        num_workers=section.num_workers,
    )
    vectors = []
    with torch.no_grad():
        for x in loader:
            vectors.extend(model(x.to(device)).flatten(1).cpu().numpy())
    np.save(out, np.stack(vectors))
    sync(device)
    return time.perf_counter() - started


def measure(name: str, device: torch.device) -> dict:
    work_dir = ARGS.work_dir
    root = work_dir / "artifacts"
    overrides = {
        "dataset.source": dataset_source(name, work_dir, ARGS.source),
        "dataset.limit": ARGS.limit,
        "encoder.backbone": ARGS.backbone,
        "encoder.width": ARGS.width,
        "encoder.input_size": ARGS.input_size,
        "embeddings.batch_size": ARGS.batch_size,
        "embeddings.num_workers": ARGS.num_workers,
    }
    settings, dataset, encoder = prepare_stages(root, overrides)
    section = settings.embeddings
    n = dataset.stats["n_images"]
    naive_out = work_dir / "naive-vectors.npy"

    print(f"{name}: warming up on {min(n, WARMUP_ROWS)} images ...", file=sys.stderr)
    _, warm_dataset, warm_encoder = prepare_stages(root, {**overrides, "dataset.limit": min(n, WARMUP_ROWS)})
    run_pipeline(section, warm_dataset, warm_encoder, root, device)
    ForwardOnly(section, warm_dataset, warm_encoder, root, device).run()
    run_naive(section, warm_dataset, warm_encoder, root, device, naive_out)

    forward = ForwardOnly(section, dataset, encoder, root, device)
    seconds = {"pipeline": [], "forward_only": [], "naive": []}
    for repeat in range(ARGS.repeats):
        pipeline_seconds, manifest = run_pipeline(section, dataset, encoder, root, device)
        seconds["pipeline"].append(pipeline_seconds)
        seconds["forward_only"].append(forward.run())
        seconds["naive"].append(run_naive(section, dataset, encoder, root, device, naive_out))
        print(
            f"{name}: repeat {repeat + 1}/{ARGS.repeats}: "
            + ", ".join(f"{k} {n / v[-1]:,.0f} img/s" for k, v in seconds.items()),
            file=sys.stderr,
        )

    stored, _ = load_embeddings(root, manifest)
    naive = np.load(naive_out)
    rate = {k: n / statistics.median(v) for k, v in seconds.items()}
    return {
        "dataset": name,
        "source": dataset.stats["source"],
        "n_images": n,
        "model": describe_model(encoder),
        "batch_size": section.batch_size,
        "shard_size": section.shard_size,
        "num_workers": section.num_workers,
        "channels_last": section.channels_last,
        "images_per_second": {k: round(v, 1) for k, v in rate.items()},
        "pipeline_vs_forward_only": round(rate["pipeline"] / rate["forward_only"], 3),
        "pipeline_vs_naive": round(rate["pipeline"] / rate["naive"], 3),
        "seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        # A correctness check for free: the naive loop's vectors against the stage's (float32 on
        # CPU: ~1e-6; AMP on CUDA: float16 rounding).
        "naive_vs_pipeline_max_abs_diff": float(np.abs(naive - stored).max()),
        "vectors_max_abs": float(np.abs(stored).max()),
    }


def main() -> None:
    if ARGS.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = ["sample", "fashion-mnist"] if ARGS.dataset == "both" else [ARGS.dataset]
    results = [measure(name, device) for name in names]
    emit(
        {
            "benchmark": "embedding_throughput",
            "date": date.today().isoformat(),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            },
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "device": device.type,
            "torch_threads": torch.get_num_threads(),
            "amp": device.type == "cuda",
            "repeats": ARGS.repeats,
            "goals": {"pipeline_vs_forward_only": ">= 0.8", "pipeline_vs_naive": ">= 1.6"},
            "results": results,
        },
        ARGS.out,
    )


if __name__ == "__main__":
    main()
