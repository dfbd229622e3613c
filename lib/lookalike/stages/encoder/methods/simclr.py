"""SimCLR (Chen et al. 2020): contrastive loss between two augmented views."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch import nn

if TYPE_CHECKING:
    from lookalike.stages.encoder.methods.options import MethodOptions


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, options: MethodOptions) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, 512, 128)
        self.criterion = NTXentLoss(temperature=options.temperature)
        self.transform = SimCLRTransform(
            input_size=options.input_size,
            gaussian_blur=0.0,
            normalize=options.normalize,
            **options.jitter(),
            **({"min_scale": options.crop_min_scale} if options.crop_min_scale else {}),
        )

    def training_loss(self, views: list[torch.Tensor], epoch: int, progress: float) -> torch.Tensor:
        z0, z1 = (self.projection_head(self.backbone(v).flatten(1)) for v in views[:2])
        return self.criterion(z0, z1)

    def before_optimizer_step(self, epoch: int) -> None:
        pass

    def after_step(self, progress: float) -> None:
        pass

    def encoder(self) -> nn.Module:
        return self.backbone
