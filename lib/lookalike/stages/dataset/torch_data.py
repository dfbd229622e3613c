"""torch Datasets over a `dataset` stage snapshot (decode happens in DataLoader workers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lookalike.stages.dataset.images import decode_snapshot_image


class SnapshotImages(Dataset):
    """Row i of the snapshot -> `transform(RGB PIL image)`."""

    def __init__(self, snapshot, transform: Callable[[Any], Any]) -> None:
        self.snapshot = snapshot
        self.transform = transform

    def __len__(self) -> int:
        return len(self.snapshot)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A DataLoader batch's samples, in order, from one Arrow read: reading rows one by
        one costs more than decoding them (about 100 of 280 us per image in embedding)."""
        images = self.snapshot[[int(i) for i in indices]]["image"]
        return [self.transform(decode_snapshot_image(image["bytes"])) for image in images]


class FittedImages(Dataset):
    """Every image of a snapshot decoded once and fitted to `size`, held as one uint8 tensor.

    Pretraining reads each image once per epoch; on a small collection of photos decoding the
    same JPEGs again every epoch is a fifth of a training step. Row i gives exactly what
    `SnapshotImages(snapshot, ResizeToTensor(size))[i]` gives, so training sees the same pixels.
    """

    def __init__(self, snapshot, size: int, batch: int = 256, desc: str = "decoding images") -> None:
        from lookalike.core.progress import progress

        n = len(snapshot)
        fit = ResizeToTensor(size)
        self.pixels = torch.empty((n, size, size, 3), dtype=torch.uint8)
        source = SnapshotImages(snapshot, fit)
        with progress(n, desc, unit="img") as bar:
            for start in range(0, n, batch):
                rows = list(range(start, min(start + batch, n)))
                self.pixels[start : start + len(rows)] = torch.stack(source.__getitems__(rows))
                bar.update(len(rows))

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


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, numpy and random; return a torch Generator for DataLoader shuffling."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def worker_context(num_workers: int) -> str | None:
    """DataLoader workers start from a forkserver, not a fork of this process.

    The pipeline process runs threads (Prefect, wandb-core) and atexit hooks that a
    forked worker would inherit; a worker forked from it can die at shutdown.
    """
    return "forkserver" if num_workers > 0 else None
