"""Settings: one pydantic-settings root with a frozen section per stage.

Precedence: defaults < `.env` < environment (`LOOKALIKE_` prefix, `__` nesting)
< explicit per-run overrides. Sections reject unknown keys so a typo fails loudly.
Secrets (W&B key, AWS credentials) are deliberately not fields here: wandb and
boto3 read them from their usual places, or from Prefect Secret blocks whose *names*
(`tracking.api_key_secret`, `mirror.credentials_secret`) are settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from lookalike.core.errors import LookalikeError, brief
from lookalike.core.graph import STAGE_NAMES, StageName
from lookalike.core.names import (
    AVG,
    GRID,
    METHOD_NAMES,
    SMALL_IMAGE_RESNETS,
    IndexPreset,
    Method,
    Pooling,
    check_backbone_name,
    check_index_type,
    check_init_reference,
)
from lookalike.core.recipe import AUTO

__all__ = ["METHOD_NAMES", "SMALL_IMAGE_RESNETS", "IndexPreset", "Method"]  # re-exported for the Prefect form and tests
DEFAULT_CACHE = "~/.cache/lookalike"
Auto = Literal["auto"]  # chosen from the data (lookalike.core.recipe)


EMPTY_TEXT = frozenset({"", "null", "none"})  # what --set and the environment spell "no value" with


class Section(BaseModel):
    """A frozen settings section; `NOT_IN_KEY` names fields that cannot change output."""

    # allow_inf_nan=False: no float setting takes inf or nan (`encoder.lr=inf` trained, and its manifest
    # recorded "lr": null, which every later run failed to read)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _empty_text_means_none(cls, data: Any) -> Any:
        """An optional field that is not text, given "", "null" or "none" as text (`--set
        encoder.crop_min_scale=null`, an empty environment variable), takes None: the "empty = ..."
        its description promises, where pydantic would try to parse the text as a number."""
        if not isinstance(data, dict):
            return data
        empty = {
            name
            for name, value in data.items()
            if isinstance(value, str)
            and value.strip().lower() in EMPTY_TEXT
            and name in cls.model_fields
            and type(None) in (args := get_args(cls.model_fields[name].annotation))
            and str not in args
        }
        return {**data, **dict.fromkeys(empty)} if empty else data

    def key_fields(self) -> dict[str, Any]:
        """The settings that can change this stage's output, for its stage key."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.NOT_IN_KEY}


def named_source(value: str) -> str:
    """`value` as a dataset source, refused when empty: "" would read as the current folder
    (Path("") is "."), a missing value taken for a choice (`--dataset "$UNSET_VARIABLE"`)."""
    if not value.strip():
        raise ValueError(
            "is empty; name the images: 'sample', a hub dataset, an image folder ('.' for the current one), "
            "a .parquet file or a save_to_disk folder"
        )
    return value


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
        """`metadata_columns` is keyed only when some are named: snapshots without any keep their keys."""
        fields = super().key_fields()
        if not fields.get("metadata_columns"):
            fields.pop("metadata_columns", None)
        return fields


class EncoderSettings(Section):
    """Self-supervised pretraining (the `encoder` stage)."""

    method: Method = Field(
        "simclr",
        description="SSL method from lightly: simclr, dino or byol; or distill: the backbone learns encoder.teacher's "
        "embedding space on these images.",
    )
    backbone: str = Field(
        "resnet-9",
        description="torchvision architecture name (resnet18, resnet50, ...) or one of lightly's small-image "
        "ResNets (resnet-9, resnet-18, ...: 3x3 stem, no max-pool, built for images under ~64 px).",
    )
    width: PositiveFloat | Auto = Field(
        "auto",
        description="Channel-width multiplier of lightly's small-image ResNets (0.25 = a quarter of the channels); "
        "auto: chosen from the data (the recipe, recorded in the encoder manifest).",
    )
    input_size: Annotated[int, Field(ge=16)] | Auto = Field(
        "auto",
        description="Square input side in pixels; auto: the images' own size up to 32 px, larger images fitted to 32.",
    )
    steps: NonNegativeInt | Auto = Field(
        "auto",
        description="Optimizer steps to pretrain for; 0 keeps random weights. auto: a budget from the collection's "
        "size and the backbone's cost (100 passes, at least 300 steps, bounded by compute for large collections).",
    )
    epochs: NonNegativeInt | None = Field(
        None,
        description="Pretraining length in passes over the collection instead of steps (wins over steps = auto; "
        "epochs x steps-per-pass is what is trained and keyed); 0 keeps random weights.",
    )
    batch_size: Annotated[int, Field(ge=2)] | Auto = Field(
        "auto", description="Pretraining batch size; auto: 256, or the whole collection when it is smaller."
    )
    colour_jitter: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5,
        description="Colour-jitter strength of the views (lightly's cj_strength; 0 turns colour jitter and random "
        "grayscale off). Keep it on grayscale images too: its brightness and contrast jitter is what stops a "
        "shortcut (without it, Fashion-MNIST fell below the untrained encoder).",
    )
    pooling: Pooling | Auto = Field(
        "auto",
        description="How the encoder reads its features out (lightly's small-image ResNets), in training (the "
        "method's head reads it) and in the index: avg, one average of the last map (invariant to where things "
        "are); grid, that map averaged on grid_cells x grid_cells cells (keeps where things are, grid_cells² x the "
        "dimensions). auto: grid for aligned collections (the dataset profile's layout), else avg.",
    )
    grid_cells: Annotated[int, Field(ge=1, le=8)] | Auto = Field(
        "auto",
        description="pooling=grid: cells per side of the grid; auto: 3 (on the 4x4 last map of a 28-32 px input, "
        "overlapping 2x2 windows; 9x the dimensions of avg), the whole map when it is smaller. Keyed only with "
        "pooling=grid.",
    )
    lr: PositiveFloat = Field(0.003, description="AdamW learning rate.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine",
        description="constant: lr throughout; cosine: lightly's CosineWarmupScheduler per step (linear warm-up over "
        "the first epoch, at most a tenth of the steps, then cosine decay to lr/1000).",
    )
    weight_decay: float = Field(0.04, ge=0, description="AdamW weight decay.")
    temperature: PositiveFloat = Field(
        0.2,
        description="simclr: NT-Xent temperature (lightly's default 0.5 learned half as fast per step on photo "
        "copies); keyed only for simclr.",
    )
    seed: int = Field(0, description="Seed for initialisation, augmentations and shuffling.")
    init: str | None = Field(
        None,
        description="Where pretraining starts (empty: random weights from seed). A weights file (.pt, .pth, .bin, "
        ".safetensors: a state dict for backbone, or a lookalike encoder.pt), a save_pretrained folder, "
        "lookalike:<alias or encoder stage key> (an earlier encoder in this artifacts root), "
        "torchvision:<weights> (e.g. ResNet18_Weights.IMAGENET1K_V1), timm:<model> or hf:<model id>. Its weights "
        "decide the backbone; steps 0 uses it as it is. Keyed by its content (init_sha256), not by where it lives.",
    )
    init_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The init's content hash (its tensors' names, dtypes, shapes and values, with its architecture): "
        "filled in when the init is read and recorded in the encoder manifest; set it to refuse an init whose "
        "weights changed.",
    )
    teacher: str | None = Field(
        None,
        description="method=distill: the model whose embedding space the backbone learns; the same references "
        "as init. Keyed by its content (teacher_sha256).",
    )
    teacher_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The teacher's content hash, like init_sha256: filled in when it is read; set it to pin it.",
    )
    num_workers: NonNegativeInt = Field(
        0, description="DataLoader worker processes (0 on a 2-core CPU: a worker would take a core from training)."
    )
    channels_last: bool = Field(
        True, description="Train in channels_last memory format (faster on CPU); in the key: it changes float rounding."
    )
    augmentation: Literal["per-image", "batched"] = Field(
        "batched",
        description="per-image: the method's lightly transform on each PIL image in the DataLoader; batched: the same "
        "ops read from that transform, run by kornia on whole batches on the training device (images are first "
        "fitted to input_size).",
    )
    crop_min_scale: float | None = Field(
        0.25,
        gt=0,
        lt=1,
        description="Smallest random-resized-crop area as a fraction of the image (dino: of its global crops; its "
        "local crops then span 0.05 to this); empty keeps the method's own default (simclr/byol 0.08, dino 0.4).",
    )
    strategy: Literal["single", "ddp"] = Field(
        "single",
        description="single: one process (the plain training loop); ddp: PyTorch Lightning's DDP strategy, "
        "devices x num_nodes processes (gloo on CPU, nccl on GPU), batch_size split among them, SimCLR's "
        "negatives gathered from every process, batch norms synchronised on GPUs. Keyed only when ddp: each process "
        "draws its own shuffle and augmentations, so the weights differ from a single run's.",
    )
    devices: PositiveInt = Field(
        1, description="strategy=ddp: processes (GPUs on a GPU machine) per node; in the key with ddp."
    )
    num_nodes: PositiveInt = Field(
        1, description="strategy=ddp: machines (nodes) taking part, launched by torchrun or SLURM; in the key with ddp."
    )
    # where an init or teacher lives is not what it is: their content hashes are keyed instead
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"num_workers", "init", "teacher"})
    UNSET_NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"init_sha256", "teacher_sha256"})
    DDP_ONLY: ClassVar[frozenset[str]] = frozenset({"strategy", "devices", "num_nodes"})
    SIMCLR_ONLY: ClassVar[frozenset[str]] = frozenset({"temperature"})
    GRID_ONLY: ClassVar[frozenset[str]] = frozenset({"grid_cells"})
    DEFAULT_NOT_IN_KEY: ClassVar[dict[str, str]] = {"pooling": AVG}  # keys from before it existed stay as they were

    def key_fields(self) -> dict[str, Any]:
        """The scale-out settings are keyed only under ddp, the temperature only for simclr. Keys are
        made from resolved settings (`lookalike.core.recipe.resolve_encoder`): what is trained, not `auto`."""
        fields = super().key_fields()
        if self.strategy == "single":
            for name in self.DDP_ONLY:
                fields.pop(name)
        if self.method != "simclr":
            for name in self.SIMCLR_ONLY:
                fields.pop(name)
        if self.pooling != GRID:
            for name in self.GRID_ONLY:
                fields.pop(name)
        for name in self.UNSET_NOT_IN_KEY:  # keys from before inits existed stay as they were
            if fields.get(name) is None:
                fields.pop(name)
        for name, default in self.DEFAULT_NOT_IN_KEY.items():
            if fields.get(name) == default:
                fields.pop(name)
        return fields

    @field_validator("init", "teacher")
    @classmethod
    def _init_reference(cls, value: str | None) -> str | None:
        return None if value is None or value == "" else check_init_reference(value)

    @model_validator(mode="after")
    def _teacher_for_distill(self) -> EncoderSettings:
        if self.method == "distill" and not self.teacher:
            raise ValueError(
                "method=distill learns a teacher's embedding space: name it with encoder.teacher "
                "(e.g. lookalike:production, a weights file, timm:<model> or hf:<model id>)"
            )
        if self.method != "distill" and (self.teacher or self.teacher_sha256):
            raise ValueError(
                f"encoder.teacher is read by method=distill only (method is {self.method}): set --method distill "
                "or leave encoder.teacher unset"
            )
        return self

    @model_validator(mode="after")
    def _grid_reads_small_resnets(self) -> EncoderSettings:
        if self.pooling == GRID and self.backbone not in SMALL_IMAGE_RESNETS:
            raise ValueError(
                f"pooling=grid reads out lightly's small-image ResNets ({', '.join(SMALL_IMAGE_RESNETS)}), not "
                f"{self.backbone}: leave encoder.pooling at auto or avg"
            )
        if self.pooling == GRID and self.method == "distill":
            raise ValueError(
                "pooling=grid does not apply to method=distill (the student's projection reads one pooled vector): "
                "leave encoder.pooling at auto or avg"
            )
        return self

    @model_validator(mode="after")
    def _one_length(self) -> EncoderSettings:
        if self.epochs is not None and self.steps != AUTO:
            raise ValueError(
                f"steps={self.steps} and epochs={self.epochs} both set the training length: keep one "
                "(encoder.steps counts optimizer steps, encoder.epochs passes over the collection)"
            )
        return self

    @model_validator(mode="after")
    def _several_processes_need_ddp(self) -> EncoderSettings:
        if self.strategy == "single" and (self.devices > 1 or self.num_nodes > 1):
            raise ValueError(
                f"devices={self.devices}, num_nodes={self.num_nodes} need several processes, but strategy is "
                "'single' (one process): set encoder.strategy=ddp, or leave devices and num_nodes at 1"
            )
        if self.strategy == "ddp" and self.batch_size != AUTO and self.batch_size < 2 * self.devices * self.num_nodes:
            raise ValueError(
                f"batch_size={self.batch_size} is split among devices x num_nodes = "
                f"{self.devices * self.num_nodes} ddp processes, leaving fewer than 2 images each: "
                "raise encoder.batch_size or lower encoder.devices"
            )
        return self

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return check_backbone_name(value)

    @model_validator(mode="before")
    @classmethod
    def _torchvision_backbones_are_width_one(cls, data: Any) -> Any:
        """`--set encoder.backbone=resnet50` alone means resnet50 as torchvision builds it, not
        an error about the small-image default's width."""
        if (
            isinstance(data, dict)
            and "width" not in data
            and data.get("backbone", cls.model_fields["backbone"].default) not in SMALL_IMAGE_RESNETS
        ):
            return {**data, "width": 1.0}
        return data

    @model_validator(mode="after")
    def _width_fits_backbone(self) -> EncoderSettings:
        if self.width != 1.0 and self.backbone not in SMALL_IMAGE_RESNETS:
            raise ValueError(
                f"width={self.width} scales lightly's small-image ResNets ({', '.join(SMALL_IMAGE_RESNETS)}); "
                f"torchvision's {self.backbone!r} has a fixed width: leave width at 1 or pick one of those"
            )
        return self

    @model_validator(mode="after")
    def _dino_local_crops_fit(self) -> EncoderSettings:
        if self.method == "dino" and self.crop_min_scale is not None and self.crop_min_scale <= 0.05:
            raise ValueError(
                f"crop_min_scale={self.crop_min_scale} leaves dino's local crops (0.05 to crop_min_scale) empty: "
                "use a value above 0.05"
            )
        return self


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


class TrackingSettings(Section):
    """Weights & Biases. The API key is read by wandb from its usual places, never from here."""

    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="auto = online when a W&B API key is configured, else offline."
    )
    project: str = Field("lookalike", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user).")
    api_key_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the W&B API key (else WANDB_API_KEY / netrc)."
    )


class MirrorSettings(Section):
    """Optional S3 mirror of finished stage folders. Credentials come from boto3's chain."""

    url: str | None = Field(None, description="s3://bucket/prefix to mirror to; empty = off.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, ...).")
    stages: tuple[StageName, ...] = Field(
        STAGE_NAMES,
        description="Which stage folders to mirror; the default is the whole chain a query on another machine needs.",
    )
    retries: NonNegativeInt = Field(
        3, description="Task retries (exponential backoff) before the mirror is reported failed."
    )
    credentials_secret: str | None = Field(
        None,
        description="Name of a Prefect Secret block holding JSON {aws_access_key_id, aws_secret_access_key"
        "[, aws_session_token]} (else boto3's own chain: environment, ~/.aws, instance role).",
    )

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value and not value.startswith("s3://"):
            raise ValueError("must look like s3://bucket/prefix")
        return value or None


class Settings(BaseSettings):
    """The root: everything a run needs, one section per stage."""

    model_config = SettingsConfigDict(
        env_prefix="LOOKALIKE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,  # as in every Section
    )

    artifacts_root: Path = Field(
        Path("artifacts"),
        description="Where every stage folder goes: a folder, or s3://bucket/prefix to share "
        "stage folders (and Prefect's cached results) between machines, each working in a copy under "
        "artifacts_cache.",
    )
    artifacts_store: str | None = Field(
        None,
        description="Set from an s3:// artifacts_root (not by hand): the bucket every stage folder is shared "
        "through; artifacts_root is then this machine's copy of it.",
    )
    artifacts_cache: str = Field(
        DEFAULT_CACHE,
        description="Where each machine keeps its copy of an s3:// artifacts_root "
        "(~ is the home of the machine that opens it).",
    )
    artifacts_lease_seconds: float = Field(
        60.0,
        ge=1.0,
        description="With an s3:// artifacts_root: how long a machine that stopped renewing its lease "
        "on a stage it was building (killed, cut off) keeps it; a retry elsewhere waits this long after a kill.",
    )
    dataset: DatasetSettings = DatasetSettings()
    encoder: EncoderSettings = EncoderSettings()
    embeddings: EmbeddingsSettings = EmbeddingsSettings()
    index: IndexSettings = IndexSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    promotion: PromotionSettings = PromotionSettings()
    tracking: TrackingSettings = TrackingSettings()
    mirror: MirrorSettings = MirrorSettings()

    @model_validator(mode="before")
    @classmethod
    def _shared_root(cls, data: Any) -> Any:
        """`artifacts_root=s3://bucket/prefix` -> artifacts_store = that URL and artifacts_root
        = this machine's copy of it (`working_copy`)."""
        if not isinstance(data, dict):
            return data
        root, store = data.get("artifacts_root"), data.get("artifacts_store")
        url = url_of(root)
        if store and url and store.rstrip("/") != url.rstrip("/"):
            raise ValueError(f"artifacts_store {store!r} and artifacts_root {url!r} differ: set artifacts_root only")
        url = url or store
        if not url:
            return data
        if not url.startswith("s3://") or len(url) <= len("s3://") or url[len("s3://")] == "/":
            raise ValueError(f"artifacts_root {url!r}: a shared root must look like s3://bucket/prefix")
        copy = working_copy(url, data.get("artifacts_cache") or cls.model_fields["artifacts_cache"].default)
        if root and not url_of(root) and Path(root) != copy:
            raise ValueError(
                f"artifacts_store is set from artifacts_root=s3://...; also setting artifacts_root={root} "
                "is ambiguous: set artifacts_root to the s3:// URL only"
            )
        return {**data, "artifacts_root": copy, "artifacts_store": url.rstrip("/")}

    @field_validator("artifacts_root")
    @classmethod
    def _root_is_a_folder(cls, value: Path) -> Path:
        """A root that is a file (or lies below one) would fail only once a stage writes, as a
        crash that a re-run repeats; it is refused here, before anything runs."""
        for path in (value.expanduser(), *value.expanduser().parents):
            if path.exists() or path.is_symlink():
                if not path.is_dir():
                    raise ValueError(
                        f"{path} is a file, not a folder: point --artifacts-root (LOOKALIKE_ARTIFACTS_ROOT) "
                        "at a folder, which is created if missing"
                    )
                break
        return value


# The settings tree's sections (encoder, index, ...), as opposed to its top-level fields.
SECTIONS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
)


def working_copy(url: str, cache: str | Path = DEFAULT_CACHE) -> Path:
    """The local root that mirrors a shared `url`: `<cache>/s3/<bucket>/<prefix>`; the one place
    a machine's copy of a bucket (a shared root, an S3 mirror read back) is worked out."""
    parsed = urlparse(url)
    return Path(cache).expanduser() / "s3" / parsed.netloc / (parsed.path.strip("/") or "_")


def url_of(root: Any) -> str | None:
    return str(root) if isinstance(root, str) and root.startswith("s3://") else None


class SettingsError(LookalikeError, ValueError):
    """Invalid settings, already formatted one line per field."""


def load_settings(overrides: dict[str, Any] | None = None, *, shadowed: list[str] = ()) -> Settings:
    """Read settings from defaults, `.env` and the environment, then apply overrides.

    Every source is validated: a value in `.env` or the environment that a higher-precedence
    source overrides is still reported when it is invalid (it would fail the day the override
    goes away).

    Args:
        overrides: dotted keys (`"encoder.epochs"`) or nested dicts; `None` values are
            ignored so optional CLI flags can be passed straight through.
        shadowed: lines for invalid values the caller found overridden among its own sources
            (`settings_for_run`: a --set value that a named parameter overrides), reported with these.

    Raises:
        SettingsError: one line per invalid field, naming it and why.
    """
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    lines = [*_unknown_environment_names(), *shadowed, *_shadowed_environment(_leaves(nested))]
    try:
        # Init kwargs are pydantic-settings' highest-priority source and are deep-merged
        # with .env and the environment, so every invalid field is reported at once.
        settings = Settings(**nested)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, lines)) from None
    if lines:
        raise SettingsError(format_validation_error(None, lines))
    return settings


def _leaves(nested: dict[str, Any]) -> dict[str, Any]:
    """{"encoder": {"epochs": 1}} -> {"encoder.epochs": 1}, for the sections of the settings tree."""
    out = {}
    for name, value in nested.items():
        if isinstance(value, dict) and name in SECTIONS:
            out.update({f"{name}.{field}": v for field, v in value.items()})
        else:
            out[name] = value
    return out


def _shadowed_environment(explicit: dict[str, Any]) -> list[str]:
    """Lines for invalid `.env` and environment values that a higher-precedence source hides."""
    try:
        from pydantic_settings import DotEnvSettingsSource, EnvSettingsSource

        environment = _leaves(EnvSettingsSource(Settings)())
        dotenv = _leaves(DotEnvSettingsSource(Settings)())
    except Exception:  # a value the source cannot even decode: the merged validation reports it
        return []
    lines = []
    for where, values, above in (("", environment, explicit), (" in .env", dotenv, {**environment, **explicit})):
        for dotted, value in values.items():
            if dotted in above:
                name = f"{env_name(dotted)}{where}"
                by = "an explicit setting" if dotted in explicit else "the environment"
                lines += _field_errors(dotted, value, name, f"overridden by {by}")
    return lines


def _field_errors(dotted: str, value: Any, name: str, note: str) -> list[str]:
    """The errors of one value on its own (cross-field rules are left to the merged settings,
    where they hold or fail for the values actually used)."""
    *parents, leaf = dotted.split(".")
    data: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        data = {part: data}
    try:
        Settings(**data)
    except ValidationError as exc:
        return [
            f"{name}: {error['msg'].removeprefix('Value error, ')} (got {brief(value)}; {note}, but invalid all the same)"
            for error in exc.errors()
            if [str(part) for part in error["loc"]] == dotted.split(".")
        ]
    except Exception:  # the environment itself cannot be read: the merged validation says why
        return []
    return []


def env_name(dotted: str) -> str:
    """The environment variable that sets a setting: `encoder.method` -> `LOOKALIKE_ENCODER__METHOD`."""
    return f"{Settings.model_config['env_prefix']}{dotted.upper().replace('.', '__')}"


def setting_default(dotted: str) -> Any:
    """A setting's default as the settings model declares it (before `.env`, the environment and
    overrides): `encoder.method` -> `"simclr"`."""
    *sections, leaf = dotted.split(".")
    model: type[BaseModel] = Settings
    for name in sections:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf].get_default(call_default_factory=True)


def _unknown_environment_names() -> list[str]:
    """LOOKALIKE_* variables naming no section or top-level setting.

    pydantic-settings rejects an unknown field inside a known section, but silently ignores
    a misspelt section (LOOKALIKE_ENCODR__EPOCHS), which would run with the default.
    """
    known = set(Settings.model_fields)
    lines = []
    for name in sorted(os.environ):
        if name.upper().startswith("LOOKALIKE_"):
            head = name[len("LOOKALIKE_") :].split("__", 1)[0].lower()
            if head not in known:
                lines.append(
                    f"{name}: unknown setting; the environment takes LOOKALIKE_<SECTION>__<FIELD> "
                    f"with a section in: {', '.join(sorted(known))}"
                )
    return lines


# The flow's (and CLI's) named run parameters and the settings they set.
RUN_PARAMETERS = {
    "dataset": "dataset.source",
    "split": "dataset.split",
    "method": "encoder.method",
    "steps": "encoder.steps",
    "epochs": "encoder.epochs",
    "index": "index.type",
    "index_factory": "index.type",  # a raw FAISS factory string; wins over `index`
    "artifacts_root": "artifacts_root",
    "mirror": "mirror.url",
}


def settings_for_run(overrides: dict[str, Any] | None = None, **named: Any) -> Settings:
    """Settings for one run: named parameters (None = not given) win over `overrides`,
    which win over the environment, `.env` and defaults."""
    unknown = set(named) - set(RUN_PARAMETERS)
    if unknown:
        raise TypeError(f"unknown run parameters: {sorted(unknown)}")
    ordered = sorted(named.items(), key=lambda item: item[0] == "index_factory")  # factory last: it wins
    dotted = {RUN_PARAMETERS[name]: value for name, value in ordered if value is not None}
    owner = {RUN_PARAMETERS[name]: name for name, value in ordered if value is not None}
    shadowed = [
        line
        for key, value in (overrides or {}).items()
        if key in dotted and value is not None
        for line in _field_errors(key, value, f"--set {key}", f"overridden by --{_flag(owner[key])}")
    ]
    return load_settings({**(overrides or {}), **dotted}, shadowed=shadowed)


def _flag(parameter: str) -> str:
    """The CLI option of a named run parameter (index_factory is --index given a factory string)."""
    return "index" if parameter == "index_factory" else parameter.replace("_", "-")


def check_overrides(overrides: dict[str, Any] | None, **named: Any) -> None:
    """A flow's `overrides` must not name a setting that has its own (given) parameter:
    the parameter would silently win."""
    owned = {RUN_PARAMETERS[name]: name for name, value in named.items() if value is not None}
    clashes = [
        f"overrides[{key!r}]: this setting has its own parameter `{owned[key]}`; set that instead"
        for key in (overrides or {})
        if key in owned
    ]
    if clashes:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(clashes))


def run_parameters(settings: Settings) -> dict[str, Any]:
    """The named flow parameters that reproduce `settings` (the CLI passes these, so the
    flow's own defaults never shadow the environment the CLI read)."""

    def value(dotted: str) -> Any:
        node: Any = settings
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    values = {name: value(dotted) for name, dotted in RUN_PARAMETERS.items()}
    values["artifacts_root"] = settings.artifacts_store or str(settings.artifacts_root)
    preset = settings.index.type in get_args(IndexPreset)
    values["index"], values["index_factory"] = (settings.index.type, None) if preset else (None, settings.index.type)
    return values


def format_validation_error(exc: ValidationError | None, extra_lines: list[str] = ()) -> str:
    """One line per field: `encoder.epochs: Input should be >= 0 (got -1)`. A field that takes a number
    or `auto` fails both ways at once; its two messages share one line."""
    fields: dict[str, tuple[list[str], str]] = {}
    for err in exc.errors() if exc else []:
        loc = list(err["loc"])
        if len(loc) > 1 and isinstance(loc[-1], str) and not loc[-1].isidentifier():  # a union branch's tag
            loc.pop()  # e.g. encoder.steps.constrained-int and encoder.steps.literal['auto']
        where = ".".join(str(p) for p in loc) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; LOOKALIKE_SECTION__FIELD in the environment)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {brief(got)})"
        fields.setdefault(where, ([], shown))[0].append(msg)
    lines = list(extra_lines) + [f"{where}: {', or '.join(msgs)}{shown}" for where, (msgs, shown) in fields.items()]
    return "invalid settings:\n  " + "\n  ".join(lines)
