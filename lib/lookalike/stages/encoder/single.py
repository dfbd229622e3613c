"""The single-process training loop of the `encoder` stage (`encoder.strategy=single`).

Trains for the plan's optimizer steps, in passes over the collection (the last pass cut short).
Checkpoints the whole training state after every pass; an interrupted run (killed, preempted)
resumes from its last finished pass instead of starting over. Each pass reseeds from
(seed, pass), so a resumed run sees the same augmentations and order as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lookalike.artifacts.shared_root import share_partial
from lookalike.artifacts.stage_runner import Built
from lookalike.core.manifest import Manifest
from lookalike.core.progress import progress
from lookalike.core.recipe import Plan
from lookalike.core.settings import EncoderSettings
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.dataset.torch_data import decode_workers, seed_everything, worker_context
from lookalike.stages.device import default_device
from lookalike.stages.encoder.checkpoint import save_atomically
from lookalike.stages.encoder.training import (
    EncoderProbe,
    EpochCallback,
    build_training_method,
    check_trainable,
    export_encoder,
    make_optimizer,
    training_images,
    training_stats,
)

TRAIN_STATE = "train-state.pt"


def train_single(
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Built:
    """Pretrain for `plan.steps` steps in this process (resuming from `folder`'s train state) and export
    the encoder. `section` is resolved; the last pass stops when the steps are done."""
    method, dim = build_training_method(section, plan, root)
    layout = torch.channels_last if section.channels_last else torch.contiguous_format
    device = default_device()
    method = method.to(device, memory_format=layout)
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    check_trainable(section, n)
    batch_size = min(section.batch_size, n)
    steps_per_epoch, total_steps, epochs = plan.steps_per_epoch, plan.steps, plan.epochs
    optimizer, scheduler = make_optimizer(method, section, steps_per_epoch, total_steps)

    state_path = folder / TRAIN_STATE
    start_epoch, losses, epoch_seconds = 0, [], []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, losses, epoch_seconds = state["epoch"], list(state["losses"]), list(state["epoch_seconds"])

    # no pass left to train (steps=0, or a resumed run that had finished): decode no image
    to_train = snapshot if start_epoch < epochs else None
    images, make_views = training_images(section, to_train, method, decode_workers("auto", n, dataset.stats))
    make_views = make_views.to(device) if make_views is not None else None
    method.train()
    done = min(start_epoch * steps_per_epoch, total_steps)
    with progress(total_steps, "encoder: pretraining", "step", initial=done, images_per_unit=batch_size) as bar:
        for epoch in range(start_epoch, epochs):
            this_epoch = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            started = time.perf_counter()
            generator = seed_everything(section.seed * 1_000_003 + epoch)
            loader = DataLoader(
                images,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                generator=generator,
                num_workers=section.num_workers,
                persistent_workers=False,
                multiprocessing_context=worker_context(section.num_workers),
                pin_memory=device.type == "cuda",
            )
            running = 0.0
            bar.set_description(f"encoder: pass {epoch + 1}/{epochs}")
            for step, batch in zip(range(this_epoch), loader):
                views = make_views(batch.to(device, non_blocking=True)) if make_views else batch
                views = [v.to(device, non_blocking=True).contiguous(memory_format=layout) for v in views]
                # bf16 autocast on CUDA only: it needs no loss scaling; on this CPU it is ~30x slower
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = method.training_loss(views, epoch, (epoch * steps_per_epoch + step) / total_steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                method.before_optimizer_step(epoch)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                method.after_step((epoch * steps_per_epoch + step + 1) / total_steps)
                value = loss.item()
                running += value
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            losses.append(running / this_epoch)
            epoch_seconds.append(time.perf_counter() - started)
            save_atomically(
                state_path,
                {
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "losses": losses,
                    "epoch_seconds": epoch_seconds,
                },
            )
            share_partial(folder, [TRAIN_STATE])  # a retry on another machine resumes from this epoch
            if on_epoch:
                on_epoch(epoch + 1, epochs, losses[-1], epoch_seconds[-1])
            if probe:
                probe(epoch + 1, method.encoder())
                method.train()

    spec, files = export_encoder(section, method, dim, folder, root, losses)
    stats = training_stats(spec, losses, epoch_seconds, n, plan, start_epoch, batch_size)
    return Built(files=files, stats=stats, resumed=start_epoch > 0)
