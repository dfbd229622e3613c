"""The `encoder` stage: self-supervised pretraining with LightlySSL, keyed and resumable.

One training loop (`lookalike.stages.encoder.loop`, on Lightning Fabric) trains in one process or
under DDP on several, and exports the one `encoder.pt` format (`lookalike.stages.encoder.checkpoint`).
An interrupted run resumes from its last pass.
`auto` settings and the step budget are resolved against the dataset first
(`lookalike.core.recipe`); the resolved values make the key and the manifest's settings,
and the manifest's `recipe` stat says why each was chosen.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import key_for
from lookalike.core.manifest import Manifest, find_manifest, stage_dir
from lookalike.core.recipe import AUTO, Plan, resolve_encoder
from lookalike.core.settings import EncoderSettings
from lookalike.stages.encoder.backbones import forward_flops
from lookalike.stages.encoder.pretrained import Init, InitError, check_fit, read_init_cached
from lookalike.stages.encoder.training import DDP_CHECKPOINTS, TRAIN_STATE, EncoderProbe, EpochCallback

STAGE = "encoder"


def resolve(
    section: EncoderSettings, dataset: Manifest, root: Path | str | None = None
) -> tuple[EncoderSettings, dict[str, str], Plan]:
    """The settings with every `auto` chosen from the dataset's stats (and the init's weights), why,
    and the training plan. `root` finds `lookalike:` inits and teachers (their encoder stages)."""
    why: dict[str, str] = {}
    init = read_init_cached(section.init, root or ".", section.backbone, section.width) if section.init else None
    if init is not None and init.carries_architecture:
        section, why = _take_architecture(section, init)
    world = section.devices * section.num_nodes if section.strategy == "ddp" else 1
    config_json = json.dumps(init.config, sort_keys=True, default=str) if init is not None and init.config else None

    def cost_of(name: str, width: float, input_size: int) -> float:
        return forward_flops(name, width, input_size, config_json if name.startswith("hf:") else None)

    resolved, recipe_why, plan = resolve_encoder(section, dataset.stats, cost_of, world)
    updates: dict[str, str] = {}
    if init is not None:
        updates["init_sha256"] = _pinned(section.init_sha256, init.sha256(resolved.backbone, resolved.width), "init")
        check_fit(init, resolved.backbone, resolved.width, resolved.input_size)
        why["init"] = f"{init.describe} (sha256 {updates['init_sha256'][:12]})"
    if resolved.method == "distill":
        teacher = read_init_cached(resolved.teacher, root or ".", resolved.backbone, resolved.width)
        if not teacher.carries_architecture:
            raise InitError(
                f"teacher {resolved.teacher!r} is a bare state dict: name a model that carries its architecture "
                "(a lookalike encoder, torchvision:, timm:, hf: or a save_pretrained folder)"
            )
        updates["teacher_sha256"] = _pinned(resolved.teacher_sha256, teacher.sha256(), "teacher")
        check_fit(teacher, teacher.architecture, teacher.width, teacher.native_size or resolved.input_size)
        why["teacher"] = f"{teacher.describe} (sha256 {updates['teacher_sha256'][:12]})"
    return resolved.model_copy(update=updates), {**recipe_why, **why}, plan


def _take_architecture(section: EncoderSettings, init: Init) -> tuple[EncoderSettings, dict[str, str]]:
    """An init that carries its architecture decides the backbone (and, left at auto, the input size)."""
    explicit = section.model_fields_set
    for name, value in (("backbone", init.architecture), ("width", init.width)):
        if name in explicit and getattr(section, name) not in (value, AUTO):
            raise InitError(
                f"encoder.init={section.init} is {init.architecture}"
                + (f" x{init.width:g}" if init.width != 1.0 else "")
                + f", but encoder.{name}={getattr(section, name)} asks for another architecture: drop one of them"
            )
    updates: dict = {"backbone": init.architecture, "width": init.width}
    why = {"backbone": f"the init's architecture ({init.describe})"}
    if section.input_size == AUTO and init.native_size:
        updates["input_size"] = init.native_size
        why["input_size"] = f"the size the init was trained at ({init.native_size} px)"
    return section.model_copy(update=updates), why


def _pinned(pin: str | None, actual: str, what: str) -> str:
    if pin is not None and pin != actual:
        raise InitError(
            f"the {what}'s weights changed: their sha256 is {actual}, encoder.{what}_sha256 pins {pin}; point "
            f"encoder.{what} at the weights you pinned, or update the pin if the change is intended"
        )
    return actual


def encoder_key(section: EncoderSettings, dataset: Manifest, root: Path | str | None = None) -> str:
    """The stage key: made from the resolved settings, so `auto` and the values it chose share a key."""
    resolved, _, _ = resolve(section, dataset, root)
    return key_for(STAGE, resolved.key_fields(), {"dataset": dataset.key})


def run_encoder_stage(
    section: EncoderSettings,
    dataset: Manifest,
    root: Path,
    on_epoch: EpochCallback | None = None,
    probe: EncoderProbe | None = None,
) -> StageResult:
    """Pretrain (or resume pretraining) and export a self-describing encoder checkpoint."""
    section, why, plan = resolve(section, dataset, root)
    key = key_for(STAGE, section.key_fields(), {"dataset": dataset.key})
    if section.strategy == "ddp" and find_manifest(root, STAGE, key) is None:
        from lookalike.stages.encoder.loop import launched_rank, train_encoder

        if launched_rank() not in (None, 0):
            # torchrun/SLURM started this process as one of the others: it trains alongside rank 0, which
            # holds the stage lock and exports; run_stage below then waits for rank 0's manifest
            train_encoder(section, plan, dataset, root, stage_dir(root, STAGE, key), None, None)

    def build(folder: Path) -> Built:
        built = _train(section, plan, dataset, root, folder, on_epoch, probe)
        return replace(built, stats={**built.stats, "recipe": why})

    result = run_stage(
        root,
        STAGE,
        key,
        settings=section.model_dump(mode="json"),
        inputs={"dataset": dataset.key},
        build=build,
    )
    (Path(root) / STAGE / key / TRAIN_STATE).unlink(missing_ok=True)  # manifest exists now
    # the Lightning checkpoints strategy=ddp resumed from before it ran the one loop (train-state.pt)
    shutil.rmtree(Path(root) / STAGE / key / DDP_CHECKPOINTS, ignore_errors=True)
    return result


def _train(
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Built:
    from lookalike.stages.encoder.loop import train_encoder  # Fabric loads only when a stage trains

    built = train_encoder(section, plan, dataset, root, folder, on_epoch, probe)
    if built is None:  # a torchrun/SLURM rank other than 0 got the stage lock: rank 0 never finished
        raise LookalikeError("encoder.strategy=ddp: rank 0 did not finish the encoder stage; see its log and re-run")
    return built
