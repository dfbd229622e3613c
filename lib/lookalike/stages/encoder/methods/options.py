"""What a method takes from the (resolved) encoder settings besides its backbone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lookalike.stages.encoder.methods.normalize import IMAGENET_NORMALIZE


@dataclass(frozen=True)
class MethodOptions:
    """What a method takes from the (resolved) encoder settings besides its backbone."""

    input_size: int
    epochs: int  # passes over the collection training will make (dino's teacher-temperature warm-up counts them)
    crop_min_scale: float | None = None  # None: the method's own default
    colour_jitter: float = 0.5  # lightly's cj_strength; 0: no colour jitter and no random grayscale
    temperature: float = 0.5  # simclr's NT-Xent temperature
    # the views' mean and std: the init's own (ImageNet's for random weights), as embedding normalises
    normalize: dict[str, list[float]] = field(default_factory=lambda: dict(IMAGENET_NORMALIZE))
    teacher: Any = None  # distill: the teacher (`lookalike.stages.encoder.pretrained.Init`)

    def jitter(self) -> dict:
        """lightly transform arguments for the colour jitter asked for."""
        if self.colour_jitter == 0:
            return {"cj_prob": 0.0, "random_gray_scale": 0.0}
        return {"cj_strength": self.colour_jitter}
