"""Distillation: a small student learns a teacher's embedding space on the collection's own images.

After lightly-train's `distillation` (v2, its default): the teacher is frozen, the student's pooled
features go through a linear projection to the teacher's dimension, and the loss pulls each
projected student embedding towards the teacher's embedding of the same augmented view (lightly's
`NegativeCosineSimilarity`). Both see the same view: the teacher at its own input size and
normalisation. The exported encoder is the student with its projection (`Projected`), so its vectors
live in the teacher's space and its neighbours are meant to be the teacher's.

The teacher is not a submodule: it is rebuilt from `encoder.teacher` (checked against
`encoder.teacher_sha256`), so training checkpoints hold the student only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.transforms import SimCLRViewTransform
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch import nn

from lookalike.stages.encoder.backbones import Projected, measured_dim

if TYPE_CHECKING:
    from lookalike.stages.encoder.methods.options import MethodOptions


class Distill(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, options: MethodOptions) -> None:
        super().__init__()
        teacher = options.teacher
        if teacher is None:
            raise ValueError("method=distill needs a teacher (encoder.teacher)")
        self.teacher_size = teacher.native_size or options.input_size
        model = teacher.backbone(self.teacher_size)
        for p in model.parameters():
            p.requires_grad_(False)
        teacher_dim = measured_dim(model, self.teacher_size)
        self._teacher = [model.eval()]  # a list: not a submodule, not in the state dict
        self.backbone = backbone
        self.projection = nn.Linear(feature_dim, int(teacher_dim))
        self.projection_dim = int(teacher_dim)
        self.criterion = NegativeCosineSimilarity()
        self.register_buffer("student_mean", torch.tensor(options.normalize["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("student_std", torch.tensor(options.normalize["std"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("teacher_mean", torch.tensor(teacher.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("teacher_std", torch.tensor(teacher.std).view(1, 3, 1, 1), persistent=False)
        self.transform = MultiViewTransform(
            [
                SimCLRViewTransform(
                    input_size=options.input_size,
                    gaussian_blur=0.0,
                    normalize=options.normalize,
                    **options.jitter(),
                    **({"min_scale": options.crop_min_scale} if options.crop_min_scale else {}),
                )
            ]
        )

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def _teacher_view(self, view: torch.Tensor) -> torch.Tensor:
        """The student's view as the teacher is fed: its own size and normalisation."""
        x = view.float() * self.student_std + self.student_mean
        if x.shape[-1] != self.teacher_size:
            x = nn.functional.interpolate(
                x, size=(self.teacher_size, self.teacher_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.teacher_mean) / self.teacher_std

    def training_loss(self, views: list[torch.Tensor], epoch: int, progress: float) -> torch.Tensor:
        view = views[0]
        teacher = self.teacher
        if next(teacher.parameters()).device != view.device:
            teacher.to(view.device)
        with torch.no_grad():
            target = teacher.eval()(self._teacher_view(view)).flatten(1).float()
        student = self.projection(self.backbone(view).flatten(1))
        return self.criterion(student, target)

    def before_optimizer_step(self, epoch: int) -> None:
        pass

    def after_step(self, progress: float) -> None:
        pass

    def encoder(self) -> nn.Module:
        return Projected(self.backbone, self.projection)
