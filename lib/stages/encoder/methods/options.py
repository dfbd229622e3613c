"""What a method takes from the (resolved) encoder settings besides its backbone."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodOptions:
    """What a method takes from the (resolved) encoder settings besides its backbone."""

    input_size: int
    epochs: int  # passes over the collection training will make (dino's teacher-temperature warm-up counts them)
    crop_min_scale: float | None = None  # None: the method's own default
    colour_jitter: float = 0.5  # lightly's cj_strength; 0: no colour jitter and no random grayscale
    temperature: float = 0.5  # simclr's NT-Xent temperature

    def jitter(self) -> dict:
        """lightly transform arguments for the colour jitter asked for."""
        if self.colour_jitter == 0:
            return {"cj_prob": 0.0, "random_gray_scale": 0.0}
        return {"cj_strength": self.colour_jitter}
