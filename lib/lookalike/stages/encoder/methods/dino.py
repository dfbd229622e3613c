"""DINO (Caron et al. 2021), as in the article: student/teacher with a momentum teacher."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from torch import nn

if TYPE_CHECKING:
    from lookalike.stages.encoder.methods.options import MethodOptions

# Head sizes from lightly's CPU-sized examples: the paper's 65536-way output is far too
# slow without a GPU and gives no benefit on small datasets.
HIDDEN, BOTTLENECK, OUTPUT = 512, 64, 2048


class DINO(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, options: MethodOptions) -> None:
        super().__init__()
        self.student_backbone = backbone
        with warnings.catch_warnings():  # lightly's head still uses torch's deprecated weight_norm
            warnings.simplefilter("ignore", FutureWarning)
            self.student_head = DINOProjectionHead(feature_dim, HIDDEN, BOTTLENECK, OUTPUT, freeze_last_layer=1)
            self.teacher_head = DINOProjectionHead(feature_dim, HIDDEN, BOTTLENECK, OUTPUT)
        self.teacher_backbone = copy.deepcopy(backbone)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=OUTPUT, warmup_teacher_temp_epochs=min(5, max(options.epochs, 1)))
        self.transform = DINOTransform(
            global_crop_size=options.input_size,
            local_crop_size=max(options.input_size // 2, 8),
            n_local_views=2,
            gaussian_blur=(0.0, 0.0, 0.0),  # blur destroys small images' detail
            **(
                {"global_crop_scale": (options.crop_min_scale, 1.0), "local_crop_scale": (0.05, options.crop_min_scale)}
                if options.crop_min_scale
                else {}
            ),
            normalize=options.normalize,
            **options.jitter(),
        )

    def training_loss(self, views: list[torch.Tensor], epoch: int, progress: float) -> torch.Tensor:
        teacher_out = [self.teacher_head(self.teacher_backbone(v).flatten(1)) for v in views[:2]]
        student_out = [self.student_head(self.student_backbone(v).flatten(1)) for v in views]
        return self.criterion(teacher_out, student_out, epoch=epoch)

    def before_optimizer_step(self, epoch: int) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=epoch)

    def after_step(self, progress: float) -> None:
        momentum = cosine_schedule(int(progress * 1000), 1000, 0.996, 1.0)
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)

    def encoder(self) -> nn.Module:
        return self.teacher_backbone  # the teacher is DINO's better encoder
