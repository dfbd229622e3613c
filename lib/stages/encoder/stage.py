"""The `encoder` stage: self-supervised pretraining with LightlySSL, keyed and resumable.

One process trains with `lookalike.stages.encoder.single`, several with Lightning's DDP
(`lookalike.stages.encoder.ddp`); both export the same `encoder.pt`
(`lookalike.stages.encoder.checkpoint`). An interrupted run resumes from its last epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.errors import LookalikeError
from lookalike.core.graph import key_for
from lookalike.core.manifest import Manifest, find_manifest, stage_dir
from lookalike.core.settings import EncoderSettings
from lookalike.stages.encoder.single import TRAIN_STATE, train_single
from lookalike.stages.encoder.training import DDP_CHECKPOINTS, EncoderProbe, EpochCallback

STAGE = "encoder"


def encoder_key(section: EncoderSettings, dataset: Manifest) -> str:
    return key_for(STAGE, section.key_fields(), {"dataset": dataset.key})


def run_encoder_stage(
    section: EncoderSettings,
    dataset: Manifest,
    root: Path,
    on_epoch: EpochCallback | None = None,
    probe: EncoderProbe | None = None,
) -> StageResult:
    """Pretrain (or resume pretraining) and export a self-describing encoder checkpoint."""
    key = encoder_key(section, dataset)
    if section.strategy == "ddp" and find_manifest(root, STAGE, key) is None:
        from lookalike.stages.encoder.ddp import launched_rank, train_ddp

        if launched_rank() not in (None, 0):
            # torchrun/SLURM started this process as one of the others: it trains alongside rank 0, which
            # holds the stage lock and exports; run_stage below then waits for rank 0's manifest
            train_ddp(section, dataset, root, stage_dir(root, STAGE, key), None, None)

    def build(folder: Path) -> Built:
        return _train(section, dataset, root, folder, on_epoch, probe)

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
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Built:
    if section.strategy == "ddp":
        from lookalike.stages.encoder.ddp import train_ddp  # Lightning loads only when asked for

        built = train_ddp(section, dataset, root, folder, on_epoch, probe)
        if built is None:  # a torchrun/SLURM rank other than 0 got the stage lock: rank 0 never finished
            raise LookalikeError(
                "encoder.strategy=ddp: rank 0 did not finish the encoder stage; see its log and re-run"
            )
        return built
    return train_single(section, dataset, root, folder, on_epoch, probe)
