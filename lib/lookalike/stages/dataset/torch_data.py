"""torch Datasets over a `dataset` stage snapshot (decode happens in DataLoader workers)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lookalike.stages.dataset.images import decode_snapshot_image, draft_side


class SnapshotImages(Dataset):
    """Row i of the snapshot -> `transform(RGB PIL image)`, a JPEG decoded at the smallest DCT scale
    that keeps both sides at least `draft_to` (None: at full size; see `decode_snapshot_image`)."""

    def __init__(self, snapshot, transform: Callable[[Any], Any], draft_to: int | None = None) -> None:
        self.snapshot = snapshot
        self.transform = transform
        self.draft_to = draft_to

    @classmethod
    def fitted(cls, snapshot, size: int) -> SnapshotImages:
        """Row i -> the image center-fitted to size x size as (size, size, 3) uint8, a JPEG decoded only as
        large as the fit needs (`draft_side`)."""
        return cls(snapshot, ResizeToTensor(size), draft_side(size))

    def __len__(self) -> int:
        return len(self.snapshot)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch's samples, in order, from one Arrow read: reading rows one by
        one costs more than decoding them (about 100 of 280 us per image in embedding)."""
        images = self.snapshot[[int(i) for i in indices]]["image"]
        return [self.transform(decode_snapshot_image(image["bytes"], self.draft_to)) for image in images]


class FittedImages(Dataset):
    """Every image of a snapshot decoded once and fitted to `size`, held as one uint8 tensor.

    Pretraining reads each image once per epoch; on a small collection of photos decoding the
    same JPEGs again every epoch is a fifth of a training step. Row i gives exactly what
    `SnapshotImages.fitted(snapshot, size)[i]` gives, so training sees the same pixels; decoded in
    `num_workers` processes (`decode_workers`).
    """

    def __init__(
        self, snapshot, size: int, batch: int = 256, desc: str = "decoding images", num_workers: int = 0
    ) -> None:
        from torch.utils.data import DataLoader

        from lookalike.core.progress import progress

        n = len(snapshot)
        self.pixels = torch.empty((n, size, size, 3), dtype=torch.uint8)
        loader = DataLoader(
            SnapshotImages.fitted(snapshot, size),
            batch_size=batch,
            num_workers=num_workers,
            multiprocessing_context=worker_context(num_workers),
        )
        with progress(n, desc, unit="img") as bar:
            start = 0
            for fitted in loader:  # in row order, whatever the number of workers
                self.pixels[start : start + len(fitted)] = fitted
                start += len(fitted)
                bar.update(len(fitted))

    @staticmethod
    def fits(n: int, size: int, budget_bytes: int = 2 << 30) -> bool:
        """Whether n images at size x size RGB fit the in-memory budget (2 GiB by default)."""
        return n * size * size * 3 <= budget_bytes

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pixels[i]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        return list(self.pixels[torch.as_tensor(indices)])


class ResizeToTensor:
    """Decoded RGB image -> (H, W, 3) uint8 tensor, center-fitted to the encoder's input size.

    uint8 crosses the DataLoader boundary (4x less than float); normalisation happens
    on whole batches in `normalize_batch`.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.fit(image), dtype=np.uint8).copy())

    def fit(self, image: Image.Image) -> Image.Image:
        """The image center-fitted to size x size; fitting a fitted image again changes nothing."""
        return ImageOps.fit(image, (self.size, self.size), Image.Resampling.BILINEAR)


# Decode workers fork from a forkserver that imported torch and datasets once per run (`worker_context`): a run's
# first loader with two workers gives its first batch in 6-7 s on a busy 2-core machine (load 10-14; 11-13 s when
# each worker imported them itself), every later loader in ~1.2 s (was 11 s again). They start only where
# decoding in this process would take longer than this, as estimated from
# ~100 us per image (read, fit, copy) plus ~150 megapixels/s of source image per core (a camera JPEG drafted
# to a small fit: 25-90 images/s per core, measured in benchmarks/decode_rate.py).
DECODE_POOL_MIN_SECONDS = 20.0
_SECONDS_PER_IMAGE, _PIXELS_PER_SECOND = 1e-4, 1.5e8


def decode_workers(setting: int | str, n_images: int, dataset_stats: dict) -> int:
    """Processes that decode snapshot images for a model: `setting`, or with auto every core this process
    may use, once decoding the images here would take long enough (`DECODE_POOL_MIN_SECONDS`, from their
    count and the dataset profile's median size) to repay starting them."""
    from lookalike.stages.dataset.stage import available_cores

    if setting != "auto":
        return int(setting)
    profile = dataset_stats.get("profile") or {}
    width, height = (profile.get(side, {}).get("median", 0) for side in ("width", "height"))
    seconds = n_images * (_SECONDS_PER_IMAGE + width * height / _PIXELS_PER_SECOND)
    cores = available_cores()
    return cores if cores > 1 and seconds >= DECODE_POOL_MIN_SECONDS else 0


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and random; return a torch Generator for DataLoader shuffling."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def worker_context(num_workers: int) -> BaseContext | None:
    """DataLoader workers start from a forkserver, not a fork of this process, and the forkserver has
    imported what every worker needs (torch, PIL, datasets) before it forks the first.

    The pipeline process runs threads (Prefect, wandb-core) and atexit hooks that a forked worker would
    inherit; a worker forked from it can die at shutdown. A forkserver is one single-threaded process per
    run: preloaded, a loader's workers start in ~1 s instead of each importing torch and datasets again
    (6-13 s for two on a busy 2-core machine, for every loader of the run: benchmarks/README.md, decode_rate).
    """
    if num_workers == 0:
        return None
    context = multiprocessing.get_context("forkserver")
    # takes effect when the run's forkserver starts (its first loader with workers); a no-op after
    context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


FORKSERVER_PRELOAD = ("lookalike.stages.dataset.torch_data", "datasets")
