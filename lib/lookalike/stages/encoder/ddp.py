"""The `encoder` stage under PyTorch Lightning's DDP strategy (`encoder.strategy=ddp`).

lightly's documented route to several devices: the same method objects as the single loop
(`lookalike.stages.encoder.stage`), wrapped in a LightningModule, trained by a Trainer with DDPStrategy on
`devices` x `num_nodes` processes (gloo on CPU, nccl on GPU), SimCLR's NT-Xent negatives
gathered from every process and, on GPUs, batch norms synchronised (torch's SyncBatchNorm
runs on GPU modules only: on CPU each process normalises over its own share of the batch). `batch_size` stays the global batch:
each process takes batch_size // world_size images per step, from Lightning's
DistributedSampler.

Processes are spawned from this one (start_method="spawn"), so the Prefect flow or the CLI
that called the stage is never executed again. Under torchrun or SLURM, whose launcher has
already started the processes (each running the whole pipeline), Lightning's cluster
environment joins them instead: rank 0 builds the stage under its lock and exports, the other
ranks train alongside it outside the lock (`run_encoder_stage`) and then reuse its manifest.

Resume: Lightning's `last.ckpt` (weights, optimizer, scheduler, loop state and the loss
history) is written in the stage folder after every epoch; an interrupted run restarts
from it (its epochs continue the loss history, though not bit-identically to an uninterrupted
run as the single loop's resume is). Spawning re-imports the calling script in each process,
so a script calling the stage needs an `if __name__ == "__main__":` guard (the CLI, Prefect's
engine and the benchmarks have one). After fit the parent exports exactly the checkpoint the single loop writes
(`encoder.pt` via `export_encoder`), so no later stage can tell it was DDP.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

try:  # the `lightning` package, else the standalone `pytorch_lightning` lightly depends on
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import DDPStrategy
except ImportError:
    import pytorch_lightning as pl
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.strategies import DDPStrategy

from lookalike.artifacts.shared_root import share_partial
from lookalike.artifacts.stage_runner import Built
from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import Manifest
from lookalike.core.recipe import Plan
from lookalike.core.settings import EncoderSettings
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.dataset.torch_data import seed_everything, worker_context
from lookalike.stages.encoder.training import (
    DDP_CHECKPOINTS,
    EncoderProbe,
    EpochCallback,
    build_training_method,
    check_trainable,
    export_encoder,
    make_optimizer,
    training_images,
    training_stats,
)

LAST = "last.ckpt"


class ShareCheckpoint(pl.Callback):
    """With a shared artifacts root, rank 0 uploads the previous epoch's `last.ckpt` as the next
    epoch starts (ModelCheckpoint writes it after every other epoch-end hook) and the last one
    at teardown, so a retry on another machine resumes from it (even one that died exporting)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._share(trainer)

    def teardown(self, trainer, pl_module, stage) -> None:
        self._share(trainer)

    def _share(self, trainer) -> None:
        if trainer.is_global_zero and (self.folder / DDP_CHECKPOINTS / LAST).is_file():
            share_partial(self.folder, [f"{DDP_CHECKPOINTS}/{LAST}"])


def externally_launched() -> bool:
    """torchrun / SLURM started the processes: Lightning must join them, not spawn its own."""
    return TorchElasticEnvironment.detect() or SLURMEnvironment.detect()


def launched_rank() -> int | None:
    """This process's global rank when torchrun/SLURM launched it, else None (Lightning spawns)."""
    if not externally_launched():
        return None
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def per_process_batch(section: EncoderSettings, n: int) -> int:
    """batch_size is the global batch: each of the world_size processes takes its share."""
    return max(min(section.batch_size, n) // (section.devices * section.num_nodes), 1)


class PretrainingModule(pl.LightningModule):
    """A lookalike.stages.encoder.methods method as a LightningModule: same loss, optimizer, schedule and hooks."""

    def __init__(self, section: EncoderSettings, plan: Plan, root: Path, dataset: Manifest, batch_size: int) -> None:
        super().__init__()
        self.section, self.plan, self.root, self.dataset, self.batch_size = (
            section,
            plan,
            Path(root),
            dataset,
            batch_size,
        )
        # built in each process (configure_model), not pickled across: dino's weight-normed head cannot be
        self.method: torch.nn.Module | None = None
        self.make_views: torch.nn.Module | None = None
        self.layout = torch.channels_last if section.channels_last else torch.contiguous_format
        self.losses: list[float] = []
        self.epoch_seconds: list[float] = []
        self._started = 0.0

    def configure_model(self) -> None:
        """The same seeded initialisation in every process (and in the parent, for export)."""
        if self.method is None:
            self.method, _ = build_training_method(self.section, self.plan, self.root)
            gather_distributed_losses(self.method)
            _, self.make_views = training_images(self.section, None, self.method)

    def setup(self, stage: str) -> None:  # Lightning calls it before configure_model
        self.configure_model()
        if not torch.cuda.is_available():  # the processes share the CPU: don't oversubscribe its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(self.trainer.num_devices, 1)))
        self.method = self.method.to(
            memory_format=self.layout
        ).train()  # lookalike.stages.encoder.backbones builds in eval mode

    def train_dataloader(self) -> DataLoader:
        images, _ = training_images(self.section, open_snapshot(self.root, self.dataset), self.method)
        # Lightning swaps the shuffling for a DistributedSampler (seeded from PL_GLOBAL_SEED, set_epoch each epoch)
        return DataLoader(
            images,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.section.num_workers,
            persistent_workers=False,
            multiprocessing_context=worker_context(self.section.num_workers),
            pin_memory=torch.cuda.is_available(),
        )

    def configure_optimizers(self):
        total_steps = int(self.trainer.estimated_stepping_batches)
        optimizer, scheduler = make_optimizer(self.method, self.section, self.plan.steps_per_epoch, total_steps)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _progress(self, done: int) -> float:
        return done / max(int(self.trainer.estimated_stepping_batches), 1)

    def on_train_epoch_start(self) -> None:
        # as the single loop: reseeded from (seed, epoch), so a resumed run repeats the same
        # augmentations; each process draws its own
        seed_everything(self.section.seed * 1_000_003 + self.current_epoch + 100_003 * self.global_rank)
        self.method.train()
        self._started = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        views = self.make_views(batch) if self.make_views is not None else batch
        views = [v.contiguous(memory_format=self.layout) for v in views]
        loss = self.method.training_loss(views, self.current_epoch, self._progress(self.global_step))
        self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.method.before_optimizer_step(self.current_epoch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.method.after_step(self._progress(self.global_step))  # global_step counts this step already

    def on_train_epoch_end(self) -> None:  # runs before ModelCheckpoint writes last.ckpt
        self.losses.append(float(self.trainer.callback_metrics["loss"]))
        self.epoch_seconds.append(time.perf_counter() - self._started)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lookalike"] = {"losses": list(self.losses), "epoch_seconds": list(self.epoch_seconds)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        history = checkpoint.get("lookalike", {})
        self.losses, self.epoch_seconds = list(history.get("losses", [])), list(history.get("epoch_seconds", []))


def gather_distributed_losses(method: torch.nn.Module) -> None:
    """Losses that can take the other processes' embeddings (NT-Xent's negatives) do so."""
    for module in method.modules():
        if hasattr(module, "gather_distributed"):
            module.gather_distributed = True


def train_ddp(
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Built | None:
    """Train on every process; rank 0 (the parent, when spawned) exports and returns what the
    manifest records, the other ranks of a torchrun/SLURM launch return None."""
    method, dim = build_training_method(section, plan, root)
    n = len(open_snapshot(root, dataset))
    check_trainable(section, n)
    world_size = section.devices * section.num_nodes
    batch_size = per_process_batch(section, n)
    ckpt_dir = folder / DDP_CHECKPOINTS
    last = ckpt_dir / LAST
    start_epoch, losses, epoch_seconds = 0, [], []
    if plan.steps:
        pl.seed_everything(section.seed, verbose=False)  # PL_GLOBAL_SEED seeds the DistributedSampler in every process
        module = PretrainingModule(section, plan, root, dataset, batch_size)
        if last.is_file():
            start_epoch = len(_load_checkpoint(last).get("lookalike", {}).get("losses", []))
        cuda = torch.cuda.is_available()
        strategy = DDPStrategy(
            process_group_backend="nccl" if cuda else "gloo",
            **({} if externally_launched() else {"start_method": "spawn"}),
        )
        trainer = pl.Trainer(
            accelerator="gpu" if cuda else "cpu",
            devices=section.devices,
            num_nodes=section.num_nodes,
            strategy=strategy,
            sync_batchnorm=cuda,
            max_epochs=plan.epochs,  # torch syncs batch norms on GPUs only
            max_steps=plan.steps,  # the last pass stops when the steps are done
            precision="bf16-mixed" if cuda else "32-true",  # bf16 autocast on CUDA only, as the single loop
            # `last.ckpt` rewritten at every epoch's end: save_last with save_top_k=0 writes it only when
            # training ends, so a run killed in epoch 2 would start over
            callbacks=[
                ModelCheckpoint(
                    dirpath=ckpt_dir,
                    filename=LAST.removesuffix(".ckpt"),
                    save_top_k=1,
                    every_n_epochs=1,
                    enable_version_counter=False,
                ),
                ShareCheckpoint(folder),
            ],
            default_root_dir=ckpt_dir,
            logger=False,
            enable_progress_bar=sys.stderr.isatty(),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=True,
        )
        trainer.fit(module, ckpt_path=last if last.is_file() else None)
        if trainer.global_rank != 0:  # torchrun/SLURM: only rank 0 exports
            return None
        checkpoint = _load_checkpoint(last)  # the parent's copy of the weights: from rank 0's last epoch
        module.configure_model()
        module.load_state_dict(checkpoint["state_dict"])
        history = checkpoint.get("lookalike", {})
        losses, epoch_seconds = list(history.get("losses", [])), list(history.get("epoch_seconds", []))
        if len(losses) != plan.epochs:  # never export a stale last.ckpt as the finished encoder
            raise LookalikeError(
                f"encoder.strategy=ddp: {last} holds {len(losses)} of {plan.epochs} passes after training; "
                f"delete {ckpt_dir} and re-run"
            )
        method = module.method
        for epoch in range(start_epoch, len(losses)):  # the processes ran elsewhere: report their epochs now
            if on_epoch:
                on_epoch(epoch + 1, plan.epochs, losses[epoch], epoch_seconds[epoch])
        if probe and len(losses) > start_epoch:  # only the final encoder comes back from the processes
            probe(len(losses), method.encoder())
    spec, files = export_encoder(section, method.cpu().eval(), dim, folder, root, losses)
    stats = {
        **training_stats(spec, losses, epoch_seconds, n, plan, start_epoch, batch_size * world_size),
        "strategy": "ddp",
        "world_size": world_size,
        "batch_size_per_process": batch_size,
    }
    return Built(files=files, stats=stats, resumed=start_epoch > 0)


def _load_checkpoint(path: Path) -> dict:
    # Lightning's own checkpoint from this stage folder, written by this run's processes
    return torch.load(path, map_location="cpu", weights_only=False)
