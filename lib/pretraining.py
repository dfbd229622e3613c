"""The `encoder` stage: self-supervised pretraining with LightlySSL.

Checkpoints the whole training state after every epoch; an interrupted run (killed,
preempted) resumes from its last finished epoch instead of starting over. Each epoch
reseeds from (seed, epoch), so a resumed run sees the same augmentations and order
as an uninterrupted one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from lightly.utils.scheduler import CosineWarmupScheduler
from torch.utils.data import DataLoader

from lib.backbones import build_backbone
from lib.config import EncoderSettings
from lib.data.snapshot import open_snapshot
from lib.data.torchdata import ResizeToTensor, SnapshotImages, seed_everything, worker_context
from lib.encoder import ENCODER_FILE, EncoderSpec, save_encoder
from lib.errors import LookalikeError
from lib.manifest import Manifest, atomic_path, find_manifest, stage_dir, stage_key
from lib.methods import build_method
from lib.methods.normalize import IMAGENET_NORMALIZE
from lib.pictures import save_loss_curve
from lib.progress import progress
from lib.shared_root import share_partial
from lib.stages import Built, StageResult, run_stage

STAGE = "encoder"
CODE_VERSION = 1
TRAIN_STATE = "train-state.pt"
LOSS_CURVE = "loss.png"
DDP_CHECKPOINTS = "ddp"  # lib.pretraining_ddp's Lightning checkpoints

# on_epoch(epoch (1-based), epochs, mean loss, epoch seconds)
EpochCallback = Callable[[int, int, float, float], None]
# probe(epoch (1-based), the encoder as it would be exported now): e.g. a kNN curve; its time is not the epoch's
EncoderProbe = Callable[[int, torch.nn.Module], None]


def encoder_key(section: EncoderSettings, dataset: Manifest) -> str:
    return stage_key(STAGE, section.key_fields(), {"dataset": dataset.key}, CODE_VERSION)


def run_encoder_stage(
    section: EncoderSettings, dataset: Manifest, root: Path, on_epoch: EpochCallback | None = None,
    probe: EncoderProbe | None = None,
) -> StageResult:
    """Pretrain (or resume pretraining) and export a self-describing encoder checkpoint."""
    key = encoder_key(section, dataset)
    if section.strategy == "ddp" and find_manifest(root, STAGE, key) is None:
        from lib.pretraining_ddp import launched_rank, train_ddp

        if launched_rank() not in (None, 0):
            # torchrun/SLURM started this process as one of the others: it trains alongside rank 0, which
            # holds the stage lock and exports; run_stage below then waits for rank 0's manifest
            train_ddp(section, dataset, root, stage_dir(root, STAGE, key), None, None)

    def build(folder: Path) -> Built:
        return _train(section, dataset, root, folder, on_epoch, probe)

    result = run_stage(
        root, STAGE, key, code_version=CODE_VERSION, settings=section.model_dump(mode="json"),
        inputs={"dataset": dataset.key}, build=build,
    )
    (Path(root) / STAGE / key / TRAIN_STATE).unlink(missing_ok=True)  # manifest exists now
    shutil.rmtree(Path(root) / STAGE / key / DDP_CHECKPOINTS, ignore_errors=True)  # strategy=ddp's resume state
    return result


def build_training_method(section: EncoderSettings) -> tuple[torch.nn.Module, int]:
    """The method (backbone and heads) freshly initialised from `section.seed`, and its feature dim."""
    seed_everything(section.seed)
    backbone, dim = build_backbone(section.backbone, section.input_size, section.width)
    return build_method(section.method, backbone, dim, section.input_size, section.epochs, section.crop_min_scale), dim


def check_trainable(section: EncoderSettings, n: int) -> None:
    if section.epochs and n < 2:
        raise LookalikeError(f"pretraining needs at least 2 images, the dataset has {n}; add images or set --epochs 0")


def make_optimizer(method: torch.nn.Module, section: EncoderSettings, steps_per_epoch: int, total_steps: int):
    """AdamW over the trainable parameters and, under lr_schedule=cosine, lightly's per-step
    CosineWarmupScheduler (warm-up over one epoch, at most a tenth of the steps)."""
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay)
    scheduler = (
        CosineWarmupScheduler(optimizer, warmup_epochs=min(steps_per_epoch, total_steps // 10), max_epochs=total_steps)
        if section.lr_schedule == "cosine" and total_steps else None
    )
    return optimizer, scheduler


def training_images(section: EncoderSettings, snapshot, method: torch.nn.Module):
    """(dataset, make_views): batched augmentation sends fitted uint8 images through the loader
    and `make_views` (kornia, to be moved to the training device) makes the views; per-image
    makes each image's views in the loader with lightly's transform (make_views None)."""
    if section.augmentation == "batched":
        from lib.methods.batched import BatchedViews

        return SnapshotImages(snapshot, ResizeToTensor(section.input_size)), BatchedViews(method.transform)
    return SnapshotImages(snapshot, method.transform), None


def export_encoder(section: EncoderSettings, method: torch.nn.Module, dim: int, folder: Path, root: Path,
                   losses: list[float]) -> tuple[EncoderSpec, list[str]]:
    """Write encoder.pt (and the loss curve): the one checkpoint format every later stage reads."""
    spec = EncoderSpec(
        architecture=section.backbone, width=section.width, feature_dim=dim, input_size=section.input_size,
        mean=tuple(IMAGENET_NORMALIZE["mean"]), std=tuple(IMAGENET_NORMALIZE["std"]), method=section.method,
    )
    save_encoder(folder / ENCODER_FILE, method.encoder().to(memory_format=torch.contiguous_format), spec)
    files = [ENCODER_FILE]
    if losses:
        save_loss_curve(folder / LOSS_CURVE, losses, title=f"{section.method} pretraining loss",
                        cache_dir=Path(root) / "cache" / "matplotlib")
        files.append(LOSS_CURVE)
    return spec, files


def _train(section: EncoderSettings, dataset: Manifest, root: Path, folder: Path, on_epoch: EpochCallback | None,
           probe: EncoderProbe | None) -> Built:
    if section.strategy == "ddp":
        from lib.pretraining_ddp import train_ddp

        built = train_ddp(section, dataset, root, folder, on_epoch, probe)
        if built is None:  # a torchrun/SLURM rank other than 0 got the stage lock: rank 0 never finished
            raise LookalikeError("encoder.strategy=ddp: rank 0 did not finish the encoder stage; see its log and re-run")
        return built
    method, dim = build_training_method(section)
    layout = torch.channels_last if section.channels_last else torch.contiguous_format
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    method = method.to(device, memory_format=layout)
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    check_trainable(section, n)
    batch_size = min(section.batch_size, n)
    steps_per_epoch = max(n // batch_size, 1)
    total_steps = steps_per_epoch * section.epochs
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

    images, make_views = training_images(section, snapshot, method)
    make_views = make_views.to(device) if make_views is not None else None
    method.train()
    for epoch in range(start_epoch, section.epochs):
        started = time.perf_counter()
        generator = seed_everything(section.seed * 1_000_003 + epoch)
        loader = DataLoader(
            images, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator,
            num_workers=section.num_workers, persistent_workers=False,
            multiprocessing_context=worker_context(section.num_workers), pin_memory=device.type == "cuda",
        )
        running = 0.0
        with progress(steps_per_epoch, f"encoder: epoch {epoch + 1}/{section.epochs}", unit="batch") as bar:
            for step, batch in enumerate(loader):
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
        losses.append(running / steps_per_epoch)
        epoch_seconds.append(time.perf_counter() - started)
        with atomic_path(state_path) as tmp:
            torch.save({"model": method.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "losses": losses, "epoch_seconds": epoch_seconds}, tmp)
        share_partial(folder, [TRAIN_STATE])  # a retry on another machine resumes from this epoch
        if on_epoch:
            on_epoch(epoch + 1, section.epochs, losses[-1], epoch_seconds[-1])
        if probe:
            probe(epoch + 1, method.encoder())
            method.train()

    spec, files = export_encoder(section, method, dim, folder, root, losses)
    stats = training_stats(spec, losses, epoch_seconds, n, total_steps, start_epoch)
    return Built(files=files, stats=stats, resumed=start_epoch > 0)


def training_stats(spec: EncoderSpec, losses: list[float], epoch_seconds: list[float], n: int, steps: int,
                   start_epoch: int) -> dict:
    """What the encoder manifest records of a training run, whichever trainer ran it."""
    return {
        "spec": spec.model_dump(),
        "losses": losses,
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "n_images": n,
        "steps": steps,
        "resumed_from_epoch": start_epoch,
        "images_per_second": round(n * max(len(epoch_seconds), 1) / max(sum(epoch_seconds), 1e-9), 1) if epoch_seconds else None,
    }
