"""BYOL (Grill et al. 2020): online network predicts a momentum target network."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

if TYPE_CHECKING:
    from lookalike.stages.encoder.methods.options import MethodOptions


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, options: MethodOptions) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        crop = {"min_scale": options.crop_min_scale} if options.crop_min_scale else {}
        crop.update(options.jitter())
        self.transform = BYOLTransform(
            view_1_transform=BYOLView1Transform(
                input_size=options.input_size, gaussian_blur=0.0, normalize=options.normalize, **crop
            ),
            view_2_transform=BYOLView2Transform(
                input_size=options.input_size, gaussian_blur=0.0, normalize=options.normalize, **crop
            ),
        )

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(1)).detach()

    def training_loss(self, views: list[torch.Tensor], epoch: int, progress: float) -> torch.Tensor:
        x0, x1 = views[:2]
        return 0.5 * (
            self.criterion(self._online(x0), self._target(x1)) + self.criterion(self._online(x1), self._target(x0))
        )

    def before_optimizer_step(self, epoch: int) -> None:
        pass

    def after_step(self, progress: float) -> None:
        momentum = cosine_schedule(int(progress * 1000), 1000, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)

    def encoder(self) -> nn.Module:
        return self.backbone
