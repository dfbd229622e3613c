"""The `index` section: the FAISS index type, whitening and search knobs."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    ByteSize,
    Field,
    PositiveInt,
    field_validator,
)

from lookalike.core.names import (
    check_index_type,
)
from lookalike.core.settings.base import Section


class IndexSettings(Section):
    """The FAISS index (the `index` stage)."""

    type: str = Field(
        "flat-l2",
        description="A preset (flat-l2, flat-ip, hnsw, sq8, sq-fp16, ivf-flat, ivf-sq8, ivf-pq, ivf-pqfs-rflat), "
        "auto (chosen for memory_budget and recall_target) or a raw FAISS factory string.",
    )
    whitening: float = Field(
        0.5,
        ge=0,
        le=1,
        description="PCA whitening learned from the indexed vectors, then cosine ranking: 0 = off, "
        "0.5 = square root (measured best), 1 = full. Inside the index, so queries get it too.",
    )
    nlist: PositiveInt | None = Field(
        None, description="IVF lists for the ivf-* presets; empty = min(4*sqrt(N), N/39)."
    )
    nprobe: PositiveInt = Field(16, description="IVF lists visited per query (search time; recorded in the manifest).")
    ef_search: PositiveInt = Field(64, description="HNSW efSearch (search time; recorded in the manifest).")
    refine_k_factor: PositiveInt = Field(
        4,
        description="Refine indexes (ivf-pqfs-rflat): candidates re-ranked exactly per result wanted (search time; recorded).",
    )
    memory_budget: ByteSize | None = Field(
        None, description="type=auto: the most bytes the index may take, e.g. 2GB or 500MiB; empty = no limit."
    )
    recall_target: float = Field(
        0.95, gt=0, le=1, description="type=auto: recall@10 vs exact search the choice must reach on held-out queries."
    )
    dedupe: Literal["none", "exact", "near"] = Field(
        "none",
        description="Index one image per group of duplicates (its lowest row id): none = every image; exact = "
        "groups of byte-identical images (same sha256); near = also near-duplicates within the threshold "
        "calibrated on augmented copies of the collection's images (as `lookalike duplicates`).",
    )
    AUTO_ONLY: ClassVar[frozenset[str]] = frozenset({"memory_budget", "recall_target"})

    def key_fields(self) -> dict[str, Any]:
        """The auto-selection inputs change the result only when type is auto; `dedupe` is keyed only
        when it drops something (keys from before it existed stay as they were)."""
        fields = super().key_fields()
        if self.type != "auto":
            for name in self.AUTO_ONLY:
                fields.pop(name)
        if self.dedupe == "none":
            fields.pop("dedupe")
        return fields

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return check_index_type(value)
