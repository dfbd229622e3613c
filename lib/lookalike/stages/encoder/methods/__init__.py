"""Self-supervised methods, one module each, built from lightly's heads, losses and transforms.

A method is a `torch.nn.Module` with:
  - `transform`: a lightly multi-view transform (PIL image -> list of view tensors); the
    batched path (`lookalike.stages.encoder.methods.batched`) runs the same ops with kornia;
  - `training_loss(views, epoch, progress)`: the loss for one batch of views;
  - `after_step(progress)`: momentum updates and similar, `progress` in [0, 1];
  - `encoder()`: the backbone to export for embedding.
Adding a method is one file plus one line in `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lookalike.stages.encoder.methods import byol, dino, distill, simclr
from lookalike.stages.encoder.methods.options import MethodOptions

METHODS: dict[str, Callable[..., nn.Module]] = {
    "dino": dino.DINO,
    "simclr": simclr.SimCLR,
    "byol": byol.BYOL,
    "distill": distill.Distill,
}


def build_method(name: str, backbone: nn.Module, feature_dim: int, options: MethodOptions) -> nn.Module:
    try:
        factory = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    return factory(backbone=backbone, feature_dim=feature_dim, options=options)
