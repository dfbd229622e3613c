"""The one training loop of the `encoder` stage, for one process and for DDP alike (Lightning Fabric).

`encoder.strategy=single` runs the loop in this process on one device; `ddp` runs the same loop on
`devices` x `num_nodes` processes under Fabric's DDPStrategy (gloo on CPU, nccl on GPU), each process
taking `batch_size // world_size` images of a step from a DistributedSampler, SimCLR's NT-Xent
negatives gathered from every process and, on GPUs, batch norms synchronised. Fabric spawns the
processes from this one (so the Prefect flow or the CLI that called the stage is never executed again;
a script that starts a DDP run needs an `if __name__ == "__main__":` guard), or joins them when
torchrun or SLURM started them, each running the whole pipeline: rank 0 builds the stage under its
lock and exports, the other ranks train alongside it outside the lock (`run_encoder_stage`).

The loop trains for the plan's optimizer steps, in passes over the collection (the last pass cut
short), and after every pass rank 0 writes the whole training state (`train-state.pt`: weights,
optimizer, schedule, the loss history) and shares it with the bucket of a shared root. An interrupted
run (killed, preempted, on another machine) resumes from its last finished pass. Each pass reseeds
from (seed, pass, rank), so a resumed run sees the same augmentations and order as an uninterrupted
one, on one process or several: a resumed run's `encoder.pt` is bit-identical to an uninterrupted
one's. Every strategy exports the one `encoder.pt` format (`export_encoder`), so no later stage can
tell how it was trained.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning_fabric.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from lookalike.artifacts.shared_root import share_partial
from lookalike.artifacts.stage_runner import Built
from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import Manifest
from lookalike.core.progress import progress
from lookalike.core.recipe import Plan
from lookalike.core.settings import EncoderSettings
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.dataset.torch_data import decode_workers, seed_everything, worker_context
from lookalike.stages.device import default_device
from lookalike.stages.encoder.checkpoint import save_atomically
from lookalike.stages.encoder.training import (
    TRAIN_STATE,
    EncoderProbe,
    EpochCallback,
    build_training_method,
    check_trainable,
    export_encoder,
    make_optimizer,
    training_images,
    training_stats,
)

RANK_SEED = 100_003  # each DDP process draws its own augmentations: rank r adds r x this to a pass's seed


def externally_launched() -> bool:
    """torchrun / SLURM started the processes: Fabric must join them, not spawn its own."""
    return bool(TorchElasticEnvironment.detect() or SLURMEnvironment.detect())


def launched_rank() -> int | None:
    """This process's global rank when torchrun/SLURM launched it, else None (Fabric spawns)."""
    if not externally_launched():
        return None
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def world_size(section: EncoderSettings) -> int:
    return section.devices * section.num_nodes if section.strategy == "ddp" else 1


def per_process_batch(section: EncoderSettings, n: int) -> int:
    """batch_size is the global batch: each of the world_size processes takes its share."""
    return max(min(_resolved(section.batch_size), n) // world_size(section), 1)


def _resolved(value: int | str) -> int:
    if isinstance(value, int):
        return value
    raise LookalikeError(f"the encoder's settings are resolved before it trains (got {value!r})")


@dataclass
class Trained:
    """What the loop leaves: the trained method and what the manifest records of its passes."""

    method: Any  # a lookalike.stages.encoder.methods method
    dim: int
    n: int  # images trained on
    start_epoch: int  # passes done before this run (resumed from)
    losses: list[float]  # mean loss of every pass, the resumed ones too
    epoch_seconds: list[float]


def train_encoder(
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Built | None:
    """Pretrain for `plan.steps` steps (resuming from `folder`'s train state) and export the encoder.
    `section` is resolved. Returns what the manifest records; None on a torchrun/SLURM rank other than 0,
    which trains alongside rank 0 and exports nothing."""
    if section.strategy != "ddp":
        trained: Trained | None = _fit(_fabric(section), section, plan, dataset, root, folder, on_epoch, probe)
    else:
        trained = _fit_ddp(section, plan, dataset, root, folder, on_epoch, probe)
    if trained is None:
        return None
    spec, files = export_encoder(section, trained.method.cpu().eval(), trained.dim, folder, root, trained.losses)
    batch_size = per_process_batch(section, trained.n)
    world = world_size(section)
    stats = training_stats(
        spec, trained.losses, trained.epoch_seconds, trained.n, plan, trained.start_epoch, batch_size * world
    )
    if section.strategy == "ddp":
        stats |= {"strategy": "ddp", "world_size": world, "batch_size_per_process": batch_size}
    return Built(files=files, stats=stats, resumed=trained.start_epoch > 0)


def _fit_ddp(
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Trained | None:
    """The loop on every process of a DDP run: spawned from this one (which then reads what rank 0 wrote),
    or joined, as one of them, when torchrun or SLURM started them (None on ranks other than 0)."""
    n = len(open_snapshot(root, dataset))
    check_trainable(section, n)
    state_path = folder / TRAIN_STATE
    start_epoch = _passes_done(state_path)
    if externally_launched():
        fabric = _fabric(section)
        fabric.launch()  # joins the processes torchrun/SLURM started
        start_epoch = fabric.broadcast(start_epoch, src=0)  # every rank goes by rank 0's state
        trained = (
            _fit(fabric, section, plan, dataset, root, folder, on_epoch, probe) if start_epoch < plan.epochs else None
        )
        if fabric.global_rank != 0:
            return None
        if trained is not None:
            return trained
    elif start_epoch < plan.epochs:
        _fabric(section).launch(
            functools.partial(_fit_in_a_process, section=section, plan=plan, dataset=dataset, root=root, folder=folder)
        )
    method: Any
    method, dim = build_training_method(section, plan, root)
    losses, epoch_seconds = _load_state(state_path, method) if state_path.is_file() else ([], [])
    if len(losses) != plan.epochs:  # never export a stale state as the finished encoder
        raise LookalikeError(
            f"encoder.strategy=ddp: {state_path} holds {len(losses)} of {plan.epochs} passes after training; "
            "delete it and re-run"
        )
    for epoch in range(start_epoch, len(losses)):  # the processes ran elsewhere: report their passes now
        if on_epoch:
            on_epoch(epoch + 1, plan.epochs, losses[epoch], epoch_seconds[epoch])
    if probe and len(losses) > start_epoch:  # only the final encoder comes back from the processes
        probe(len(losses), method.encoder())
    return Trained(method, dim, n, start_epoch, losses, epoch_seconds)


def _fabric(section: EncoderSettings) -> Fabric:
    """One device in this process, or DDP over `devices` x `num_nodes` processes. Precision stays 32-bit:
    the loop autocasts its loss to bf16 on CUDA itself (on this CPU bf16 is ~30x slower)."""
    cuda = torch.cuda.is_available()
    if section.strategy != "ddp":
        return Fabric(accelerator=default_device().type, devices=1, precision="32-true")
    # spawned from this process, unless torchrun/SLURM started them (then Fabric creates none)
    strategy = DDPStrategy(
        process_group_backend="nccl" if cuda else "gloo", start_method="popen" if externally_launched() else "spawn"
    )
    return Fabric(
        accelerator="cuda" if cuda else "cpu",
        devices=section.devices,
        num_nodes=section.num_nodes,
        strategy=strategy,
        precision="32-true",
    )


def _fit_in_a_process(
    fabric: Fabric, section: EncoderSettings, plan: Plan, dataset: Manifest, root: Path, folder: Path
) -> None:
    """`_fit` in a spawned process: its results stay in the train state rank 0 writes (a method cannot
    always be pickled back: dino's weight-normed head)."""
    _fit(fabric, section, plan, dataset, root, folder, None, None)


def _fit(
    fabric: Fabric,
    section: EncoderSettings,
    plan: Plan,
    dataset: Manifest,
    root: Path,
    folder: Path,
    on_epoch: EpochCallback | None,
    probe: EncoderProbe | None,
) -> Trained:
    """The loop, in every process (on one, with `on_epoch` and `probe` called after every pass)."""
    distributed = fabric.world_size > 1
    method: Any  # a lookalike.stages.encoder.methods method: an nn.Module with training_loss, after_step, encoder
    method, dim = build_training_method(section, plan, root)
    if distributed:
        gather_distributed_losses(method)
        if fabric.device.type == "cuda":  # torch's SyncBatchNorm runs on GPU modules only
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        else:  # the processes share the CPU: don't oversubscribe its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(section.devices, 1)))
    layout = torch.channels_last if section.channels_last else torch.contiguous_format
    device = fabric.device
    method = method.to(device).to(memory_format=layout)
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    check_trainable(section, n)
    batch_size = per_process_batch(section, n)
    steps_per_epoch, total_steps, epochs = plan.steps_per_epoch, plan.steps, plan.epochs
    optimizer, scheduler = make_optimizer(method, section, steps_per_epoch, total_steps)

    state_path = folder / TRAIN_STATE
    start_epoch, losses, epoch_seconds = 0, [], []
    resumable = fabric.is_global_zero and state_path.is_file()
    state = torch.load(state_path, map_location="cpu", weights_only=True) if resumable else None
    if distributed:  # every process resumes from rank 0's state (its own folder may hold none)
        state = fabric.broadcast(state, src=0)
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, losses, epoch_seconds = state["epoch"], list(state["losses"]), list(state["epoch_seconds"])
    model, optimizer = fabric.setup(method, optimizer)  # under DDP: the gradients are averaged over processes
    model.mark_forward_method("training_loss")  # so the loss goes through DDP's forward

    # no pass left to train (steps=0, or a resumed run that had finished): decode no image
    to_train = snapshot if start_epoch < epochs else None
    workers = decode_workers("auto", n, dataset.stats) if not distributed else 0  # DDP: a process per core already
    images, make_views = training_images(section, to_train, method, workers)
    make_views = make_views.to(device) if make_views is not None else None
    method.train()
    done = min(start_epoch * steps_per_epoch, total_steps)
    bar_of_this_process = (
        progress(
            total_steps, "encoder: pretraining", "step", initial=done, images_per_unit=batch_size * fabric.world_size
        )
        if fabric.is_global_zero
        else contextlib.nullcontext(_NO_BAR)
    )
    with bar_of_this_process as bar:
        for epoch in range(start_epoch, epochs):
            this_epoch = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            started = time.perf_counter()
            # reseeded from (seed, pass): a resumed run repeats the same augmentations; each process draws its own
            generator = seed_everything(section.seed * 1_000_003 + epoch + RANK_SEED * fabric.global_rank)
            loader = DataLoader(
                images,
                batch_size=batch_size,
                drop_last=True,
                num_workers=section.num_workers,
                persistent_workers=False,
                multiprocessing_context=worker_context(section.num_workers),
                pin_memory=device.type == "cuda",
                **_order(images, epoch, generator, fabric, section.seed),
            )
            running = 0.0
            bar.set_description(f"encoder: pass {epoch + 1}/{epochs}")
            for step, batch in zip(range(this_epoch), loader):
                views = make_views(batch.to(device, non_blocking=True)) if make_views else batch
                views = [v.to(device, non_blocking=True).contiguous(memory_format=layout) for v in views]
                # bf16 autocast on CUDA only: it needs no loss scaling; on this CPU it is ~30x slower
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model.training_loss(views, epoch, (epoch * steps_per_epoch + step) / total_steps)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                method.before_optimizer_step(epoch)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                method.after_step((epoch * steps_per_epoch + step + 1) / total_steps)
                value = loss.item()
                running += value
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            mean = running / this_epoch
            if distributed:  # the pass's loss over every process
                reduced = fabric.all_reduce(torch.tensor(mean, device=device), reduce_op="mean")
                assert isinstance(reduced, torch.Tensor)
                mean = reduced.item()
            losses.append(mean)
            epoch_seconds.append(time.perf_counter() - started)
            if fabric.is_global_zero:
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
                share_partial(folder, [TRAIN_STATE])  # a retry on another machine resumes from this pass
            fabric.barrier()
            if on_epoch:
                on_epoch(epoch + 1, epochs, losses[-1], epoch_seconds[-1])
            if probe:
                probe(epoch + 1, method.encoder())
                method.train()
    return Trained(method, dim, n, start_epoch, losses, epoch_seconds)


def _order(images, epoch: int, generator: torch.Generator, fabric: Fabric, seed: int) -> dict[str, Any]:
    """How a pass's loader orders the images: shuffled by the pass's generator in one process; under DDP
    each process takes its share of one shuffle seeded from (seed, pass), as Lightning's sampler does."""
    if fabric.world_size == 1:
        return {"shuffle": True, "generator": generator}
    sampler: DistributedSampler[int] = DistributedSampler(
        images, num_replicas=fabric.world_size, rank=fabric.global_rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    return {"sampler": sampler}


def _passes_done(state_path: Path) -> int:
    if not state_path.is_file():
        return 0
    return int(torch.load(state_path, map_location="cpu", weights_only=True)["epoch"])


def _load_state(state_path: Path, method: torch.nn.Module) -> tuple[list[float], list[float]]:
    """Load the weights rank 0 wrote into `method`: (losses, seconds) of each pass."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    method.load_state_dict(state["model"])
    return list(state["losses"]), list(state["epoch_seconds"])


def gather_distributed_losses(method: torch.nn.Module) -> None:
    """Losses that can take the other processes' embeddings (NT-Xent's negatives) do so."""
    for module in method.modules():
        if hasattr(module, "gather_distributed"):
            module.gather_distributed = True  # type: ignore[assignment]  # a bool attribute of lightly's losses


class _NoBar:
    """The bar of a process other than rank 0: rank 0 shows the run's progress."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass


_NO_BAR = _NoBar()
