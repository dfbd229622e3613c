"""Where a pretraining step's time goes: data loading, augmentation, forward, backward, optimiser.

Runs the encoder stage's own building blocks (`lookalike.stages.encoder.training`: the method,
the optimiser and schedule, the training images and the batched views) for `--steps` steps on the
bundled sample (or `--dataset`), timing each phase of every step with `time.perf_counter` (CPU work
is synchronous; on CUDA the device is synchronised around each phase). The first `--warmup` steps
are not counted. Reports the median milliseconds per phase, each phase's share of a step and the
images/s the steps add up to.

Usage:
    .venv/bin/python benchmarks/step_time.py [--steps 30] [--warmup 3] [--set encoder.method=dino ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from _record import emit
from torch.utils.data import DataLoader

from lookalike.core.settings import load_settings
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage
from lookalike.stages.device import default_device
from lookalike.stages.encoder.stage import resolve
from lookalike.stages.encoder.training import build_training_method, make_optimizer, training_images

PHASES = ("load", "augment", "forward", "backward", "optimiser")


def parse_sets(values: list[str]) -> dict[str, str]:
    return dict(value.split("=", 1) for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dataset", default="sample")
    parser.add_argument("--set", action="append", default=[], help="section.field=value, as `lookalike run --set`")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="step-time-"))
    settings = load_settings({"dataset.source": args.dataset, "artifacts_root": str(root), **parse_sets(args.set)})
    section = settings.encoder
    dataset = run_dataset_stage(settings.dataset, root).manifest
    snapshot = open_snapshot(root, dataset)
    device = default_device()
    layout = torch.channels_last if section.channels_last else torch.contiguous_format
    section, _, plan = resolve(section, dataset, root)
    method, _ = build_training_method(section, plan, root)
    method = method.to(device, memory_format=layout).train()
    batch_size = min(section.batch_size, len(snapshot))
    total = args.steps + args.warmup
    optimizer, scheduler = make_optimizer(method, section, max(len(snapshot) // batch_size, 1), total)
    images, make_views = training_images(section, snapshot, method)
    make_views = make_views.to(device) if make_views is not None else None
    loader = DataLoader(
        images, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    batches = iter(loader)
    for step in range(total):
        start = clock()
        try:
            batch = next(batches)
        except StopIteration:  # a small collection: start another pass
            batches = iter(loader)
            batch = next(batches)
        loaded = clock()
        views = make_views(batch.to(device)) if make_views else batch
        views = [v.to(device).contiguous(memory_format=layout) for v in views]
        augmented = clock()
        loss = method.training_loss(views, 0, step / total)
        forwarded = clock()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backwarded = clock()
        method.before_optimizer_step(0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        method.after_step((step + 1) / total)
        done = clock()
        if step >= args.warmup:
            for phase, (a, b) in zip(
                PHASES,
                [
                    (start, loaded),
                    (loaded, augmented),
                    (augmented, forwarded),
                    (forwarded, backwarded),
                    (backwarded, done),
                ],
            ):
                times[phase].append(b - a)

    per_step = np.sum([times[p] for p in PHASES], axis=0)
    record = {
        "benchmark": "step_time",
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {device.type}",
        "torch": torch.__version__,
        "settings": {
            "dataset": args.dataset,
            **{
                k: v
                for k, v in section.model_dump(mode="json").items()
                if k in ("method", "backbone", "width", "input_size", "batch_size", "augmentation", "channels_last")
            },
        },
        "steps_timed": args.steps,
        "median_ms": {p: round(1000 * float(np.median(times[p])), 1) for p in PHASES},
        "share": {p: round(float(np.sum(times[p]) / np.sum(per_step)), 3) for p in PHASES},
        "median_step_ms": round(1000 * float(np.median(per_step)), 1),
        "images_per_second": round(batch_size / float(np.median(per_step)), 1),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
