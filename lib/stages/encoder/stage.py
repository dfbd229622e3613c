"""The `encoder` stage: self-supervised pretraining with LightlySSL, keyed and resumable.

One process trains with `lookalike.stages.encoder.single`, several with Lightning's DDP
(`lookalike.stages.encoder.ddp`); both export the same `encoder.pt`
(`lookalike.stages.encoder.checkpoint`). An interrupted run resumes from its last pass.
`auto` settings and the step budget are resolved against the dataset first
(`lookalike.core.recipe`); the resolved values make the key and the manifest's settings,
and the manifest's `recipe` stat says why each was chosen.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import key_for
from lookalike.core.manifest import Manifest, find_manifest, stage_dir
from lookalike.core.recipe import Plan, resolve_encoder
from lookalike.core.settings import EncoderSettings
from lookalike.stages.encoder.backbones import forward_flops
from lookalike.stages.encoder.single import TRAIN_STATE, train_single
from lookalike.stages.encoder.training import DDP_CHECKPOINTS, EncoderProbe, EpochCallback

STAGE = "encoder"


def resolve(section: EncoderSettings, dataset: Manifest) -> tuple[EncoderSettings, dict[str, str], Plan]:
    """The settings with every `auto` chosen from the dataset's stats, why, and the training plan."""
    world = section.devices * section.num_nodes if section.strategy == "ddp" else 1
    return resolve_encoder(section, dataset.stats, forward_flops, world)


def encoder_key(section: EncoderSettings, dataset: Manifest) -> str:
    """The stage key: made from the resolved settings, so `auto` and the values it chose share a key."""
    resolved, _, _ = resolve(section, dataset)
    return key_for(STAGE, resolved.key_fields(), {"dataset": dataset.key})


def run_encoder_stage(
    section: EncoderSettings,
    dataset: Manifest,
    root: Path,
    on_epoch: EpochCallback | None = None,
    probe: EncoderProbe | None = None,
) -> StageResult:
    """Pretrain (or resume pretraining) and export a self-describing encoder checkpoint."""
    section, why, plan = resolve(section, dataset)
    key = key_for(STAGE, section.key_fields(), {"dataset": dataset.key})
    if section.strategy == "ddp" and find_manifest(root, STAGE, key) is None:
        from lookalike.stages.encoder.ddp import launched_rank, train_ddp

        if launched_rank() not in (None, 0):
            # torchrun/SLURM started this process as one of the others: it trains alongside rank 0, which
            # holds the stage lock and exports; run_stage below then waits for rank 0's manifest
            train_ddp(section, plan, dataset, root, stage_dir(root, STAGE, key), None, None)

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
    shutil.rmtree(Path(root) / STAGE / key / DDP_CHECKPOINTS, ignore_errors=True)  # strategy=ddp's resume state
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
    if section.strategy == "ddp":
        from lookalike.stages.encoder.ddp import train_ddp  # Lightning loads only when asked for

        built = train_ddp(section, plan, dataset, root, folder, on_epoch, probe)
        if built is None:  # a torchrun/SLURM rank other than 0 got the stage lock: rank 0 never finished
            raise LookalikeError(
                "encoder.strategy=ddp: rank 0 did not finish the encoder stage; see its log and re-run"
            )
        return built
    return train_single(section, plan, dataset, root, folder, on_epoch, probe)
