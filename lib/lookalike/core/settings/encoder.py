"""The `encoder` section: the self-supervised recipe (method, backbone, budget, augmentation)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from lookalike.core.names import (
    AVG,
    GRID,
    SMALL_IMAGE_RESNETS,
    Method,
    Pooling,
    check_backbone_name,
    check_init_reference,
)
from lookalike.core.recipe import AUTO
from lookalike.core.settings.base import Auto, Section

# strategy=ddp's own part of its key: 2 since it runs the loop a single process runs (lookalike.stages.encoder.loop)
# under Fabric, where Lightning's Trainer drew its batches and augmentations in another order (single-process keys
# and weights did not move)
DDP_LOOP_VERSION = 2


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
        "size and the backbone's cost: 100 passes, at least the 600 steps the recipe needs to learn (fewer when "
        "encoder.minutes buys fewer), bounded by compute for large collections.",
    )
    minutes: PositiveFloat = Field(
        5.0,
        description="Pretraining time budget of a small collection's auto steps, in minutes at the step time "
        "estimated for the recipe on 2 CPU cores (the same on every machine, so the steps and keys are): the "
        "floor of 600 steps is lowered to what this buys. Not keyed itself: the steps it gives are.",
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
        description="single: the training loop in one process; ddp: the same loop under Lightning Fabric's DDP "
        "strategy on devices x num_nodes processes (gloo on CPU, nccl on GPU), batch_size split among them, SimCLR's "
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
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset({"num_workers", "init", "teacher", "minutes"})
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
        else:  # ddp's weights moved when it came to run the one training loop (Fabric), not Lightning's Trainer
            fields["ddp_loop"] = DDP_LOOP_VERSION
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
        if (
            self.strategy == "ddp"
            and isinstance(self.batch_size, int)
            and self.batch_size < 2 * self.devices * self.num_nodes
        ):
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
