"""The encoder recipe read from the data: `auto` encoder settings resolved against the collection.

The dataset stage records what it saw (image count, size distribution, grayscale or colour:
`lookalike.stages.dataset.profile`). Every encoder setting left at `auto` is chosen from that
record here, with one line saying why; a setting given explicitly is kept as given. The choice
is a pure function of the dataset manifest's stats and the backbone's cost, so it is
deterministic and the resolved values (not the word `auto`) make the encoder's stage key: an
`auto` run and a run that spells out the same values share one cached encoder.

Training length is counted in optimizer steps. An epoch on a 900-image collection is 3 steps at
batch 256; on 60,000 images it is 234, so "15 epochs" means 45 steps to one and 3,500 to the
other. The step budget gives small collections enough steps to learn and bounds large ones by
compute: see `step_budget`. The numbers behind each rule are in benchmarks/README.md
("Quality against baselines" and "Recipe probes").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lookalike.core.names import AVG, GRID, SMALL_IMAGE_RESNETS

AUTO = "auto"

# input size: collections whose images are this small or smaller train at their own size
SMALL_IMAGE_SIDE = 32
PHOTO_INPUT_SIZE = 32  # larger images are fitted to this (64 px: no gain at the same steps, ~5x the time)
MIN_INPUT_SIZE = 16
IMAGENET_STEM_MIN, IMAGENET_INPUT_SIZE = 64, 224  # torchvision backbones: their stem needs room
WIDTH = 0.25  # lightly's small-image ResNets at a quarter of the channels
BATCH_SIZE = 256

# step budget (see `step_budget`)
PASSES = 100  # passes over a collection, when that is more than a small collection's floor
# the steps the default recipe needs on a small collection, whatever its size: on photo copies of 312, 624 and 936
# images (none of them the 1,872 the recipe was tuned on) precision@10 was 0.954 / 0.868 / 0.813 after 300 steps
# and 0.954 / 0.959 / 0.931 after 700, which took 5.0-5.1 min; 600 keeps most of that gain inside 5 minutes
# (benchmarks/README.md, step_budget.py)
LEARN_STEPS = 600
REFERENCE_STEPS = 1_500  # the most steps at the reference cost: resnet-9 x0.25 at 28 px, batch 256
# A reference step's seconds on the 2-core CPU the goals are measured on, from the photo runs above (700 steps at
# 32 px, 1.22x the reference FLOPs, in 298-305 s: 0.43 s a step; 0.36 s on a faster evening, step_time.py):
# how `encoder.minutes` becomes steps, the same on every machine, so the steps, and the key, do not depend on
# where the run is
REFERENCE_STEP_SECONDS = 0.352
DEFAULT_MINUTES = 5.0
REFERENCE = ("resnet-9", 0.25, 28)
REFERENCE_BATCH = 256
GRID_CELLS = 3  # pooling=grid: 3x3 cells (on the 4x4 last map of 28-32 px inputs: 2x2 windows, stride 1)
SMALL_RESNET_STRIDE_STAGES = 3  # lightly's small-image ResNets halve the map three times (layers 2-4)


@dataclass(frozen=True)
class Collection:
    """What the dataset stage saw, as far as the recipe needs it."""

    n_images: int
    side: int | None  # median of each image's shorter side, px
    colour: str | None  # "grayscale", "colour", "mixed" or None (not profiled)
    layout: str | None = None  # "aligned", "varied" or None (profiled before layout was)
    layout_share: float | None = None  # the share of the pixel variance that position explains

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> Collection:
        profile = stats.get("profile") or {}
        width, height = profile.get("width") or {}, profile.get("height") or {}
        side = min(width["median"], height["median"]) if "median" in width and "median" in height else None
        return cls(
            int(stats.get("n_images", 0)),
            side,
            profile.get("colour"),
            profile.get("layout"),
            profile.get("layout_share"),
        )

    def describe(self) -> str:
        size = f"{self.side} px" if self.side else "unknown size"
        return f"{self.n_images:,} images, {size}, {self.colour or 'colour unknown'}, {self.layout or 'layout unknown'}"


@dataclass(frozen=True)
class Plan:
    """How long training runs: `steps` optimizer steps of `steps_per_epoch` each pass."""

    steps: int
    steps_per_epoch: int
    why: str

    @property
    def epochs(self) -> int:
        """Passes over the collection, the last one cut short when steps is not a multiple."""
        return math.ceil(self.steps / self.steps_per_epoch) if self.steps else 0


# backbone cost per image (forward FLOPs) for (backbone, width, input_size); stages supply it (it needs torch)
CostOf = Callable[[str, float, int], float]


def steps_per_epoch(n_images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one pass: each of world_size processes takes ceil(n / world) images in
    batches of its share of batch_size (the last partial batch dropped), at least one."""
    per_process = math.ceil(n_images / world_size)
    batch = max(min(batch_size, n_images) // world_size, 1)
    return max(per_process // batch, 1)


def step_budget(
    n_images: int, batch_size: int, relative_cost: float, world_size: int = 1, minutes: float = DEFAULT_MINUTES
) -> tuple[int, str]:
    """The default training length: PASSES passes over the collection, at least what the recipe needs to learn
    (LEARN_STEPS, or what `minutes` of pretraining buy when that is fewer), at most REFERENCE_STEPS / relative_cost
    (a step of `relative_cost` times the reference step's compute).

    A small collection trains for the steps it needs, not for passes over itself (a pass of a few hundred images
    is one step); a large one is bounded by compute, the bound shrinking with a costlier backbone, input or batch.
    Time is estimated from `REFERENCE_STEP_SECONDS`, so the same settings give the same steps on any machine.
    """
    per_epoch = steps_per_epoch(n_images, batch_size, world_size)
    passes = PASSES * per_epoch
    step_seconds = REFERENCE_STEP_SECONDS * relative_cost
    in_time = max(int(minutes * 60 / step_seconds), 1)
    floor = min(LEARN_STEPS, in_time)
    wanted = max(passes, floor)
    ceiling = max(round(REFERENCE_STEPS / relative_cost), 1)
    if wanted > ceiling:
        return ceiling, (
            f"bounded by compute: {REFERENCE_STEPS} reference steps / {relative_cost:.2g}x the reference step's cost "
            f"({PASSES} passes would be {passes})"
        )
    if passes >= floor:
        return wanted, f"{PASSES} passes of {per_epoch} steps"
    estimate = f"about {floor * step_seconds / 60:.1f} min at an estimated {step_seconds:.2f} s a step on 2 CPU cores"
    if floor == LEARN_STEPS:
        return wanted, (
            f"the {LEARN_STEPS} steps the recipe needs to learn a small collection ({PASSES} passes would be "
            f"{passes}; {estimate}, within encoder.minutes={minutes:g})"
        )
    return wanted, (
        f"what encoder.minutes={minutes:g} buys: {floor} steps ({estimate}); the recipe needs {LEARN_STEPS} to "
        f"learn a small collection"
    )


def last_map_side(input_size: int) -> int:
    """The side of a small-image ResNet's last feature map for `input_size` px inputs (28 -> 4, 16 -> 2)."""
    side = input_size
    for _ in range(SMALL_RESNET_STRIDE_STAGES):
        side = math.ceil(side / 2)
    return side


def _grid_cells(input_size: int) -> tuple[int, str]:
    side = last_map_side(input_size)
    cells = min(GRID_CELLS, side)
    if cells == side:
        return cells, f"{cells}x{cells} cells: the whole {side}x{side} last map at {input_size} px"
    return cells, f"{cells}x{cells} cells of the {side}x{side} last map at {input_size} px"


def _pooling(section, collection: Collection, small_resnet: bool) -> tuple[str, str]:
    if not small_resnet:
        return AVG, f"{section.backbone} pools its own last map"
    if section.method == "distill":
        return AVG, "a distilled student's projection reads one pooled vector"
    if collection.layout is None:
        return AVG, "no layout profile: one average, wherever things are"
    share = f"position explains {collection.layout_share:.0%} of the pixel variance"
    if collection.layout == "aligned":
        return GRID, f"aligned images ({share}): the last map averaged on a grid keeps where things are"
    return AVG, f"framing varies ({share}): one average of the last map, wherever things are"


def resolve_encoder(section, stats: dict[str, Any], cost_of: CostOf, world_size: int = 1):
    """(the section with every `auto` resolved, {field: why}, Plan) for a collection's dataset stats.

    `section` is an `EncoderSettings`; explicit values are kept, `encoder.epochs` (when given) is
    turned into the steps it means, so the key depends on what is trained, not how it was asked.
    """
    collection = Collection.from_stats(stats)
    chosen: dict[str, Any] = {}
    why: dict[str, str] = {}

    small_resnet = section.backbone in SMALL_IMAGE_RESNETS
    if section.input_size == AUTO and not small_resnet:
        side = collection.side or IMAGENET_INPUT_SIZE
        chosen["input_size"] = min(max(side, IMAGENET_STEM_MIN), IMAGENET_INPUT_SIZE)
        why["input_size"] = (
            f"torchvision's {section.backbone} has an ImageNet stem (downsamples 4x at once): "
            f"{IMAGENET_STEM_MIN}-{IMAGENET_INPUT_SIZE} px"
        )
    elif section.input_size == AUTO:
        if collection.side is None:
            chosen["input_size"], why["input_size"] = PHOTO_INPUT_SIZE, "no size profile: the photo default"
        elif collection.side <= SMALL_IMAGE_SIDE:
            chosen["input_size"] = max(collection.side, MIN_INPUT_SIZE)
            why["input_size"] = f"the images' own size ({collection.side} px median shorter side)"
        else:
            chosen["input_size"] = PHOTO_INPUT_SIZE
            why["input_size"] = (
                f"images of {collection.side} px fitted to {PHOTO_INPUT_SIZE} px: larger inputs gave no gain at "
                "the same steps and cost several times more per step on a CPU"
            )
    if section.width == AUTO and not small_resnet:
        chosen["width"], why["width"] = 1.0, f"torchvision's {section.backbone} has a fixed width"
    elif section.width == AUTO:
        chosen["width"], why["width"] = WIDTH, f"{WIDTH:g} of the channels: the cheapest width that learned"
    if section.pooling == AUTO:
        chosen["pooling"], why["pooling"] = _pooling(section, collection, small_resnet)
    if section.grid_cells == AUTO and chosen.get("pooling", section.pooling) == GRID:
        chosen["grid_cells"], why["grid_cells"] = _grid_cells(chosen.get("input_size", section.input_size))
    if section.batch_size == AUTO:
        batch = max(min(BATCH_SIZE, collection.n_images), 2)
        chosen["batch_size"] = batch
        why["batch_size"] = "the default batch" if batch == BATCH_SIZE else "the whole collection in one batch"

    resolved = section.model_copy(update=chosen)
    per_epoch = steps_per_epoch(collection.n_images, resolved.batch_size, world_size)
    if section.epochs is not None:
        steps, reason = section.epochs * per_epoch, f"encoder.epochs={section.epochs} x {per_epoch} steps per pass"
    elif section.steps != AUTO:
        steps, reason = section.steps, f"encoder.steps={section.steps}"
    else:
        cost = cost_of(resolved.backbone, resolved.width, resolved.input_size) / cost_of(*REFERENCE)
        cost *= resolved.batch_size / REFERENCE_BATCH
        steps, reason = step_budget(collection.n_images, resolved.batch_size, cost, world_size, section.minutes)
    resolved = resolved.model_copy(update={"steps": steps, "epochs": None})
    why["steps"] = reason
    return resolved, why, Plan(steps, per_epoch, reason)
