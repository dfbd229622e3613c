"""What the encoder's training loop is made of: the method built from settings, the optimizer and
schedule, the training images and views, the exported checkpoint and the stats the manifest records.

The loop (`lookalike.stages.encoder.loop`) builds on this module for one process and for DDP alike,
and exports the one checkpoint format every later stage reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from lightly.utils.scheduler import CosineWarmupScheduler
from pydantic import ValidationError

from lookalike.core.errors import LookalikeError, brief
from lookalike.core.manifest import MANIFEST, IntegrityError, Manifest, stage_dir
from lookalike.core.names import GRID
from lookalike.core.recipe import Plan
from lookalike.core.settings import EncoderSettings
from lookalike.stages.dataset.images import draft_side
from lookalike.stages.dataset.torch_data import FittedImages, SnapshotImages, seed_everything
from lookalike.stages.encoder.backbones import build_backbone, measured_dim, with_pooling
from lookalike.stages.encoder.checkpoint import ENCODER_FILE, EncoderSpec, save_encoder
from lookalike.stages.encoder.methods import MethodOptions, build_method
from lookalike.stages.encoder.methods.normalize import IMAGENET_NORMALIZE
from lookalike.stages.encoder.pretrained import Init, fitted_backbone, starting_weights
from lookalike.stages.pictures import save_loss_curve

LOSS_CURVE = "loss.png"
TRAIN_STATE = "train-state.pt"  # the loop's whole training state after its last finished pass
DDP_CHECKPOINTS = "ddp"  # where strategy=ddp kept Lightning's checkpoints before the one loop: removed with it

# on_epoch(epoch (1-based), epochs, mean loss, epoch seconds)
EpochCallback = Callable[[int, int, float, float], None]
# probe(epoch (1-based), the encoder as it would be exported now): e.g. a kNN curve; its time is not the epoch's
EncoderProbe = Callable[[int, torch.nn.Module], None]


def build_training_method(section: EncoderSettings, plan: Plan, root: Path | str) -> tuple[torch.nn.Module, int]:
    """The method (backbone and heads) freshly initialised from `section.seed` (the backbone from
    `encoder.init` when set), and its feature dim. `section` is resolved
    (`lookalike.stages.encoder.stage.resolve`): no `auto` left, the init's sha256 filled in."""
    seed_everything(section.seed)
    init, teacher = starting_weights(section, root)
    backbone, dim = _starting_backbone(section, init)
    options = MethodOptions(
        input_size=section.input_size,
        epochs=plan.epochs,
        crop_min_scale=section.crop_min_scale,
        colour_jitter=section.colour_jitter,
        temperature=section.temperature,
        normalize=normalization(init),
        teacher=teacher,
    )
    return build_method(section.method, backbone, dim, options), dim


def _starting_backbone(section: EncoderSettings, init: Init | None) -> tuple[torch.nn.Module, int]:
    """The backbone training starts from, read out as it will be indexed (`encoder.pooling`), so the
    method's head learns from the vectors the index will hold; and their dimension."""
    pooling, cells = readout(section)
    if init is None:
        return build_backbone(section.backbone, section.input_size, section.width, pooling=pooling, grid_cells=cells)
    model = with_pooling(fitted_backbone(init, section.backbone, section.width, section.input_size), pooling, cells)
    return model, measured_dim(model, section.input_size)


def normalization(init: Init | None) -> dict[str, list[float]]:
    """The mean and std images are normalised with: the init's own, else ImageNet's (lightly's default)."""
    if init is None or not init.carries_architecture:
        return {"mean": list(IMAGENET_NORMALIZE["mean"]), "std": list(IMAGENET_NORMALIZE["std"])}
    return {"mean": list(init.mean), "std": list(init.std)}


def check_trainable(section: EncoderSettings, n: int) -> None:
    if section.steps and n < 2:
        raise LookalikeError(f"pretraining needs at least 2 images, the dataset has {n}; add images or set --steps 0")


def make_optimizer(method: torch.nn.Module, section: EncoderSettings, steps_per_epoch: int, total_steps: int):
    """AdamW over the trainable parameters and, under lr_schedule=cosine, lightly's per-step
    CosineWarmupScheduler (warm-up over one pass, at most a tenth of the steps)."""
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay)
    scheduler = (
        CosineWarmupScheduler(optimizer, warmup_epochs=min(steps_per_epoch, total_steps // 10), max_epochs=total_steps)
        if section.lr_schedule == "cosine" and total_steps
        else None
    )
    return optimizer, scheduler


def training_images(section: EncoderSettings, snapshot, method: torch.nn.Module, decode_workers: int = 0):
    """(dataset, make_views): batched augmentation sends fitted uint8 images through the loader
    and `make_views` (kornia, to be moved to the training device) makes the views; per-image
    makes each image's views in the loader with lightly's transform (make_views None).
    Batched images are decoded once (in `decode_workers` processes) and kept in memory when they
    fit (`FittedImages`). A JPEG decodes only as large as its use needs (`draft_side`)."""
    if section.augmentation == "batched":
        from lookalike.stages.encoder.methods.batched import BatchedViews

        views = BatchedViews(method.transform)
        if snapshot is not None and FittedImages.fits(len(snapshot), section.input_size):
            fitted = FittedImages(
                snapshot, section.input_size, desc="encoder: decoding images once", num_workers=decode_workers
            )
            return fitted, views
        return SnapshotImages.fitted(snapshot, section.input_size), views
    return SnapshotImages(snapshot, method.transform, per_image_draft(section)), None


def per_image_draft(section: EncoderSettings) -> int | None:
    """The side a JPEG decodes to for lightly's per-image transform: at least `draft_side(input_size)`, as
    for a fitted image, and enough that its smallest random-resized crop (crop_min_scale of the area, so its
    square root of each side) still holds input_size pixels across, so no crop is made from fewer pixels
    than it gets. Full size when the method's own crop scale applies (it is not known here)."""
    if section.crop_min_scale is None:
        return None
    return max(draft_side(section.input_size), math.ceil(section.input_size / math.sqrt(section.crop_min_scale)))


def readout(section: EncoderSettings) -> tuple[str | None, int | None]:
    """(pooling, grid cells) as an encoder spec records them: avg (and settings from before pooling)
    stay unnamed, the cells are named for a grid only."""
    if section.pooling == GRID:
        return GRID, section.grid_cells
    return None, None


def encoder_spec(section: EncoderSettings, dim: int, init: Init | None = None) -> EncoderSpec:
    """What rebuilds and feeds an encoder trained with these settings (from `init`, when it had one);
    `dim` is the read-out's (`_starting_backbone`)."""
    norm = normalization(init)
    pooling, cells = readout(section)
    return EncoderSpec(
        architecture=section.backbone,
        width=section.width,
        feature_dim=dim,
        pooling=pooling,
        grid_cells=cells,
        input_size=section.input_size,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        method=section.method,
        config=init.config if init is not None else None,
        init_sha256=section.init_sha256,
    )


def recorded_settings(encoder: Manifest, root: Path | str) -> EncoderSettings:
    """The resolved settings a finished encoder stage recorded.

    Raises:
        IntegrityError: they are not valid settings (an older version recorded "lr": null for lr=inf):
            a re-run would read the same folder again, so the message names the folder to delete.
    """
    fields = {name: value for name, value in encoder.settings.items() if name in EncoderSettings.model_fields}
    try:
        return EncoderSettings.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        folder = stage_dir(root, encoder.stage, encoder.key)
        raise IntegrityError(
            f"{folder / MANIFEST} records encoder settings this version cannot read ({where}: {first['msg']}, "
            f"got {brief(first.get('input'))}); delete {folder} and re-run to rebuild it"
        ) from None


def starting_point(encoder: Manifest, root: Path | str) -> tuple[torch.nn.Module, EncoderSpec]:
    """The backbone a finished encoder stage started training from, rebuilt from its recorded
    settings: seeded exactly as `build_training_method` seeds it, or its init read again and checked
    against the recorded sha256, so its weights are the ones training began with (the evaluation's
    "what did training add" baseline)."""
    section = recorded_settings(encoder, root)
    seed_everything(section.seed)
    init, _ = starting_weights(section, root)
    backbone, dim = _starting_backbone(section, init)
    return backbone.eval(), encoder_spec(section, dim, init)


def teacher_model(encoder: Manifest, root: Path | str) -> tuple[torch.nn.Module, EncoderSpec] | None:
    """A distilled encoder's teacher as it embeds (its own input size and normalisation); None otherwise."""
    section = recorded_settings(encoder, root)
    if section.method != "distill":
        return None
    _, teacher = starting_weights(section, root)
    size = teacher.native_size or section.input_size
    model = teacher.backbone(size)
    spec = EncoderSpec(
        architecture=teacher.architecture,
        width=teacher.width,
        feature_dim=measured_dim(model, size),
        input_size=size,
        mean=teacher.mean,
        std=teacher.std,
        method="teacher",
        config=teacher.config,
        pooling=teacher.pooling,
        grid_cells=teacher.grid_cells,
    )
    return model, spec


def export_encoder(
    section: EncoderSettings, method: torch.nn.Module, dim: int, folder: Path, root: Path, losses: list[float]
) -> tuple[EncoderSpec, list[str]]:
    """Write encoder.pt (and the loss curve): the one checkpoint format every later stage reads."""
    init, _ = starting_weights(section, root)
    projection = getattr(method, "projection_dim", None)  # distill: the student speaks the teacher's dim
    spec = encoder_spec(section, projection or dim, init).model_copy(update={"projection": projection})
    save_encoder(folder / ENCODER_FILE, method.encoder().to(memory_format=torch.contiguous_format), spec)
    files = [ENCODER_FILE]
    if losses:
        save_loss_curve(
            folder / LOSS_CURVE,
            losses,
            title=f"{section.method} pretraining loss",
            cache_dir=Path(root) / "cache" / "matplotlib",
        )
        files.append(LOSS_CURVE)
    return spec, files


def training_stats(
    spec: EncoderSpec,
    losses: list[float],
    epoch_seconds: list[float],
    n: int,
    plan: Plan,
    start_epoch: int,
    batch_size: int,
) -> dict:
    """What the encoder manifest records of a training run, whichever trainer ran it
    (`batch_size`: images per step, all processes together)."""
    images = plan.steps * batch_size
    return {
        "spec": spec.model_dump(exclude_none=True),
        "losses": losses,
        "epoch_seconds": [round(s, 2) for s in epoch_seconds],
        "n_images": n,
        "steps": plan.steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": plan.epochs,
        "steps_why": plan.why,
        "pretrain_seconds": round(sum(epoch_seconds), 1),
        "resumed_from_epoch": start_epoch,
        "images_per_second": round(images / max(sum(epoch_seconds), 1e-9), 1) if epoch_seconds else None,
    }
