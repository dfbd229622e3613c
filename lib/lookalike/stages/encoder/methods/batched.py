"""A method's lightly multi-view transform, run on whole batches with kornia.

lightly's transforms work on one PIL image at a time inside the DataLoader. On a 2-core
CPU that costs more than the training step itself: 2.4 ms per image for SimCLR's two
views and 4.8 ms for DINO's four, against 1.7 ms for a ResNet-9 x0.25 step at 28 px.
kornia applies the same operations to a whole uint8 batch on the training device, with
independent random parameters for every image.

The kornia views are *read from the method's own lightly transform*, so the two paths
cannot drift apart: every op in lightly's pipeline maps to one kornia op, and an op
with no mapping is an error, never silently dropped. The one difference: each image is
first fitted to the encoder's input size (as the embeddings stage does), so a crop is
cut from that square rather than from the full-resolution original.
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import torch
from lightly.transforms.gaussian_blur import GaussianBlur
from lightly.transforms.rotation import RandomRotate, RandomRotateDegrees
from lightly.transforms.solarize import RandomSolarization
from lightly.transforms.torchvision_v2_compatibility import ToTensor
from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T  # what lightly builds with
from torch import nn

from lookalike.core.errors import LookalikeError


class BatchedViews(nn.Module):
    """(N, H, W, 3) uint8 batch -> one normalised float (N, 3, h, w) tensor per view."""

    def __init__(self, transform) -> None:
        super().__init__()
        self.views = nn.ModuleList(view_pipeline(view) for view in transform.transforms)

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return [view(x) for view in self.views]


def view_pipeline(view) -> nn.Sequential:
    """kornia ops equivalent to one lightly view transform (its `.transform` Compose)."""
    compose = view if isinstance(view, T.Compose) else getattr(view, "transform", None)
    if not isinstance(compose, T.Compose):
        raise LookalikeError(
            f"batched augmentation reads a lightly view's torchvision Compose, got {type(compose).__name__}; "
            "set encoder.augmentation=per-image"
        )
    ops = [op for step in compose.transforms if (op := kornia_op(step)) is not None]
    return nn.Sequential(*ops)


def kornia_op(step) -> nn.Module | None:
    """The kornia op for one step of a lightly/torchvision pipeline; None for a no-op step."""
    if isinstance(step, T.RandomResizedCrop):
        return K.RandomResizedCrop(
            size=tuple(step.size),
            scale=tuple(step.scale),
            ratio=tuple(step.ratio),
            resample=T.InterpolationMode(step.interpolation).name,
            cropping_mode="resample",
        )
    if isinstance(step, T.RandomHorizontalFlip):
        return K.RandomHorizontalFlip(p=step.p) if step.p > 0 else None
    if isinstance(step, T.RandomVerticalFlip):
        return K.RandomVerticalFlip(p=step.p) if step.p > 0 else None
    if isinstance(step, RandomRotate):
        if step.prob == 0:
            return None
        return K.RandomRotation(degrees=(step.angle, step.angle), p=step.prob)
    if isinstance(step, RandomRotateDegrees):
        # lightly keeps the range and probability in a torchvision RandomApply([RandomRotation])
        apply = step.transform
        if apply.p == 0:
            return None
        return K.RandomRotation(degrees=tuple(apply.transforms[0].degrees), p=apply.p)
    if isinstance(step, T.RandomApply) and len(step.transforms) == 1 and isinstance(step.transforms[0], T.ColorJitter):
        jitter = step.transforms[0]
        if step.p == 0:
            return None
        # torchvision stores the sampled ranges ((1-b, 1+b), ..., (-h, h)); kornia takes them as ranges too
        ranges = [
            tuple(r) if r is not None else (1.0, 1.0) for r in (jitter.brightness, jitter.contrast, jitter.saturation)
        ]
        hue = tuple(jitter.hue) if jitter.hue is not None else (0.0, 0.0)
        return K.ColorJiggle(*ranges, hue, p=step.p)
    if isinstance(step, T.RandomGrayscale):
        return K.RandomGrayscale(p=step.p) if step.p > 0 else None
    if isinstance(step, GaussianBlur):
        if step.prob == 0:
            return None
        low, high = step.sigmas
        size = 2 * math.ceil(3 * high) + 1
        return K.RandomGaussianBlur((size, size), sigma=(low, high), p=step.prob)
    if isinstance(step, RandomSolarization):
        if step.prob == 0:
            return None
        # PIL inverts uint8 values >= threshold; on k/255 floats a threshold of (t - 0.5)/255 selects the same pixels
        threshold = (step.threshold - 0.5) / 255
        return K.RandomSolarize(thresholds=(threshold, threshold), additions=(0.0, 0.0), p=step.prob)
    if isinstance(step, ToTensor):
        return None  # BatchedViews already made floats in [0, 1]
    if isinstance(step, T.Normalize):
        return K.Normalize(mean=torch.tensor(step.mean), std=torch.tensor(step.std))
    raise LookalikeError(
        f"batched augmentation has no kornia equivalent for {type(step).__name__} in the method's lightly "
        "transform; set encoder.augmentation=per-image"
    )
