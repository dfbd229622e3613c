"""The `dataset` section: where the images come from and how the snapshot is made."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
)

from lookalike.core.settings.base import Auto, Section, named_source


class DatasetSettings(Section):
    """Where the images come from."""

    source: str = Field(
        "sample",
        description="'sample' (bundled Fashion-MNIST), a hub dataset name such as 'food101', "
        "an image folder, an s3:// prefix, a .parquet file, a table (.csv, .tsv, .jsonl, .parquet) whose image column "
        "names files or s3:// URLs, or a save_to_disk folder.",
    )
    split: str = Field("train", description="Which split to index.")
    config_name: str | None = Field(None, description="Hub dataset configuration (subset), if any.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    image_column: str = Field(
        "image",
        description="Column holding the images (in a table: their paths, relative to the table, or s3:// URLs).",
    )
    label_column: str | None = Field("label", description="Column holding labels; missing is fine.")
    limit: PositiveInt | None = Field(None, description="Index a seeded random subset of this size.")
    seed: int = Field(0, description="Seed for the subset draw.")
    max_unreadable_fraction: float = Field(
        0.1, ge=0, le=1, description="Fail when more than this fraction of images cannot be decoded."
    )
    max_image_pixels: PositiveInt = Field(
        89_478_485, description="Images declaring more pixels are skipped as decompression bombs."
    )
    max_side: int | None = Field(
        None,
        ge=32,
        description="Store a copy of each image whose longest side is at most this many pixels (an RGB JPEG at "
        "quality 95), as img2dataset and FFCV do, instead of the original: training, embedding and every later "
        "version read the smaller copy; the original stays at its path. None: store the originals.",
    )
    metadata_columns: tuple[str, ...] = Field(
        (),
        description="Scalar columns of the source (numbers, text, true/false, dates) kept with each image: stored "
        "beside the index, returned with every hit and usable in filters (--where year>=2020). A list, or names "
        "separated by commas.",
    )
    verify: Literal["memo", "full"] = Field(
        "memo",
        description="How a local collection's content key is checked: memo re-hashes only files whose size, mtime or "
        "inode changed since the last run (the content-hash memo in the artifacts root); full re-reads and hashes "
        "every file.",
    )
    num_workers: NonNegativeInt | Auto = Field(
        "auto",
        description="Processes that read, hash and test-decode images while the snapshot is taken (0: in this "
        "process); auto: every core available, once there are at least 2,048 images.",
    )
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"max_unreadable_fraction", "verify", "num_workers"})
    # the metadata every index stores anyway, and the snapshot's own columns: not names a column can take
    RESERVED: ClassVar[frozenset[str]] = frozenset(
        {"row", "row_id", "label", "path", "split", "width", "height", "sha256", "image"}
    )

    @field_validator("source")
    @classmethod
    def _named_source(cls, value: str) -> str:
        return named_source(value)

    @field_validator("metadata_columns", mode="before")
    @classmethod
    def _column_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("metadata_columns")
    @classmethod
    def _usable_columns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        taken = sorted(cls.RESERVED.intersection(value))
        if taken:
            raise ValueError(
                f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} stored for every index already "
                "(row, label, path, split, width, height, sha256); list only other columns"
            )
        if len(set(value)) != len(value):
            raise ValueError("a column is listed twice")
        return value

    def key_fields(self) -> dict[str, Any]:
        """`metadata_columns` and `max_side` are keyed only when set: snapshots without them keep their keys."""
        fields = super().key_fields()
        if not fields.get("metadata_columns"):
            fields.pop("metadata_columns", None)
        if fields.get("max_side") is None:
            fields.pop("max_side", None)
        return fields
