"""The `embeddings` section: batched inference, shards, workers and scale-out."""

from __future__ import annotations

from typing import ClassVar

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    model_validator,
)

from lookalike.core.settings.base import Auto, Section


class EmbeddingsSettings(Section):
    """Batched inference into shards (the `embeddings` stage)."""

    shard_size: PositiveInt = Field(1024, description="Rows per shard: the unit of resume.")
    batch_size: PositiveInt = Field(256, description="Inference batch size (not part of the key).")
    num_workers: NonNegativeInt | Auto = Field(
        "auto",
        description="Processes that decode images while this process embeds them (0: in this process); auto: "
        "every core available, once decoding the images to embed in one process would take 20 s or more (estimated "
        "from their count and the dataset's median size: about 600 camera photos, 200,000 28-px images), and none "
        "inside a Dask worker (the cluster's processes share the cores already).",
    )
    channels_last: bool = Field(True, description="Use channels_last memory format (faster on CPU).")
    retries: NonNegativeInt = Field(
        2, description="Task retries (exponential backoff with jitter); each retry embeds only missing shards."
    )
    reuse: bool = Field(
        True,
        description="Incremental add: take the vector of an image an earlier embeddings stage already embedded "
        "with the same encoder and shard_size, matched by content sha256 (renamed files included), so only new "
        "images are embedded; its files are verified first. Off embeds every image.",
    )
    dask_workers: NonNegativeInt = Field(
        0,
        description="Embed the missing shards on a local Dask cluster of this many single-threaded worker "
        "processes (prefect-dask's DaskTaskRunner); 0 = in the stage task's own process.",
    )
    dask_address: str | None = Field(
        None,
        description="Embed the missing shards on the running Dask cluster whose scheduler listens here "
        "(tcp://host:8786); its workers need this code and the same artifacts root.",
    )
    shards_per_task: PositiveInt = Field(
        1,
        description="Shards one Dask task embeds (each task loads the encoder once).",
    )
    # reuse is out of the key: a stored vector equals a recomputed one up to float rounding.
    # Where shards are embedded is out of it too: a shard is the same batches wherever it runs.
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset(
        {
            "batch_size",
            "num_workers",
            "channels_last",
            "retries",
            "reuse",
            "dask_workers",
            "dask_address",
            "shards_per_task",
        }
    )

    @model_validator(mode="after")
    def _one_cluster(self) -> EmbeddingsSettings:
        if self.dask_workers and self.dask_address:
            raise ValueError(
                f"embeddings.dask_workers={self.dask_workers} starts a local cluster and embeddings.dask_address="
                f"{self.dask_address} names a running one: set only one of them"
            )
        return self
