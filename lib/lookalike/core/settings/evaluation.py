"""The `evaluation` and `promotion` sections: what is measured, and what a run must reach to be promoted."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
)

from lookalike.core.settings.base import Section


class EvaluationSettings(Section):
    """Retrieval quality measured on the built index (the `evaluation` stage)."""

    k: PositiveInt = Field(10, description="Neighbours considered for kNN accuracy and precision@k.")
    grid_queries: NonNegativeInt = Field(8, description="Query rows drawn in the retrieval grid.")
    grid_neighbours: PositiveInt = Field(5, description="Neighbours per query in the grid.")
    query_split: str = Field(
        "auto",
        min_length=1,
        description="Where the queries come from: 'auto' (the source's 'test' split, else 'validation', when it "
        "exists and is not the indexed split; else leave-one-out), a split name, or 'none' (leave-one-out "
        "over the indexed images).",
    )
    max_queries: PositiveInt | None = Field(
        10_000,
        description="Most queries: a seeded sample of the held-out split (dataset.seed) or of the "
        "indexed images (leave-one-out); empty = all.",
    )
    baselines: tuple[Literal["pixels", "init"], ...] = Field(
        ("pixels", "init"),
        description="Measured beside the run on the same queries (exact search): pixels = the images fitted to at "
        "most 32 px and flattened; init = the encoder at its starting point, before training. Empty = none.",
    )
    duplicates: bool = Field(
        True,
        description="Also find exact (same bytes) and near-duplicate groups of the indexed images, with a "
        "threshold calibrated on augmented copies of them (duplicates.json, duplicates.png).",
    )
    sample_size: PositiveInt | None = Field(
        50_000,
        description="Most indexed images the evaluation searches: above it, the baselines, the scores (the run's "
        "index restricted to the same rows), the leak check and the map use a seeded sample of this many; "
        "duplicate groups are those of the sampled images, each searched in the whole index. Empty = all.",
    )
    # What `query_split` resolves to is keyed instead: the held-out snapshot's key is an input
    # of the evaluation key, so 'auto' and the split it picks name the same result. `sample_size` is
    # keyed by `keyed_sample_size`, only when it leaves rows out.
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"query_split", "sample_size"})
    DEFAULT_NOT_IN_KEY: ClassVar[dict[str, Any]] = {"duplicates": True}

    def key_fields(self) -> dict[str, Any]:
        """Settings added after keys were recorded are keyed only away from their default, so the
        default keys stay as they were."""
        fields = super().key_fields()
        for name, default in self.DEFAULT_NOT_IN_KEY.items():
            if fields.get(name) == default:
                fields.pop(name)
        return fields

    def keyed_sample_size(self, n_images: int | None) -> dict[str, Any]:
        """`sample_size` for the key of an evaluation of `n_images` indexed images: only when it samples
        them, so every collection it does not cut keeps the key it had before the setting existed."""
        if self.sample_size is not None and n_images is not None and n_images > self.sample_size:
            return {"sample_size": self.sample_size}
        return {}


class PromotionSettings(Section):
    """The gate a run's index must pass to become `production` (no stage depends on it)."""

    min_self_retrieval_at_1: float = Field(
        0.99, ge=0, le=1, description="Lowest fraction of indexed images that must find themselves first."
    )
    min_recall_at_10: float = Field(
        0.9, ge=0, le=1, description="Lowest recall@10 against exact search (1.0 for exact indexes)."
    )
    max_knn_drop: float = Field(
        0.02, ge=0, le=1, description="Largest fall in kNN accuracy allowed against the current production index."
    )
    min_gain_over_pixels: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Least precision@k the encoder must add over the raw-pixel baseline on the same queries "
        "(0: must not be worse; negative: may be worse by this much).",
    )
    min_gain_over_init: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Least precision@k the encoder must add over its own starting point (the untrained encoder) "
        "on the same queries (0: training must not have made it worse).",
    )
    min_teacher_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="method=distill: the least fraction of its teacher's precision@k the student must keep on the "
        "same queries (0: not checked; e.g. 0.95).",
    )
