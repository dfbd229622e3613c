"""Backbones with their classifier removed, so they output features.

Two families:
  - torchvision classification models by name (`resnet18`, `resnet50`, `mobilenet_v3_small`,
    ...): ImageNet stems that downsample 4x at once, the right choice from ~64 px up;
  - lightly's CIFAR-style ResNets (`resnet-9`, `resnet-18`, ... from `ResNetGenerator`):
    a 3x3 stride-1 stem with no max-pool, so 28-32 px images keep their detail, and a
    `width` multiplier on every layer: what lightly's own small-image benchmarks train.
    Whether one beats ResNet-18 within a CPU budget is what `benchmarks/pretraining.py`
    measures (not yet: see benchmarks/README.md).
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from torch import nn

from lookalike.core.names import GRID
from lookalike.core.settings import SMALL_IMAGE_RESNETS


@lru_cache(maxsize=1)
def _classification_models() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


LEGACY_GRID_CELLS = 2  # pooling=grid checkpoints from before grid_cells was recorded: a 2x2 grid


def readout_cells(pooling: str | None, grid_cells: int | None = None) -> int:
    """Cells per side of the read-out: 1 for avg (None), `grid_cells` for a grid."""
    return (grid_cells or LEGACY_GRID_CELLS) if pooling == GRID else 1


class SmallImageResNet(nn.Module):
    """lightly's CIFAR-style ResNet as a feature extractor.

    lightly's own forward ends in `avg_pool2d(out, 4)`, which assumes 32 px inputs; this one
    pools adaptively, so any input size (and DINO's half-size local crops) works. Its read-out
    (`with_pooling`): `avg` averages the last map to one vector per image; `grid` averages it on a
    cells x cells grid and concatenates the cells, keeping where things are (cells² x the
    dimensions): the read-out for aligned collections (`lookalike.core.recipe`). Training reads
    features out the same way (the method's head sees what is indexed).
    """

    def __init__(self, name: str, width: float) -> None:
        super().__init__()
        from lightly.models import ResNetGenerator

        net = ResNetGenerator(name, width=width)
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.cells = 1  # cells per side of the read-out: 1 is avg; `with_pooling` sets it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, self.cells), 1)


def with_pooling(model: nn.Module, pooling: str | None, grid_cells: int | None = None) -> nn.Module:
    """`model` reading its features out with `pooling` (None: avg; grid: on `grid_cells` x `grid_cells`
    cells), when it is one of lightly's small-image ResNets, the only backbones with a choice; any other
    module is read out as it was built. Returns it."""
    if isinstance(model, SmallImageResNet):
        model.cells = readout_cells(pooling, grid_cells)
    return model


def check_backbone_name(name: str) -> str:
    """Validate a backbone name: a torchvision classification model, a lightly small-image ResNet,
    or a `timm:` / `hf:` model (their libraries judge those names when building)."""
    if name in SMALL_IMAGE_RESNETS or name.startswith(("timm:", "hf:")):
        return name
    known = _classification_models()
    if name not in known:
        close = [m for m in known if m.startswith(name[:4])][:8]
        close += [m for m in SMALL_IMAGE_RESNETS if m.startswith(name[:4])][:2]
        hint = f"; similar: {', '.join(close)}" if close else "; e.g. resnet-9, resnet18, resnet50, mobilenet_v3_small"
        raise ValueError(f"unknown torchvision backbone {name!r}{hint}")
    return name


class Projected(nn.Module):
    """A backbone followed by a linear projection: a distilled student mapped into its teacher's space."""

    def __init__(self, backbone: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.projection = backbone, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(torch.flatten(self.backbone(x), 1))


class HFBackbone(nn.Module):
    """A transformers vision model as a feature extractor: its pooled output (DINOv2: the normalised
    CLS token; CNNs: the pooled map), else the first token of its last hidden state."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        fields = {k: v for k, v in config.items() if k != "model_type"}
        # built from the recorded config alone: never from code a model ships (auto_map)
        self.model = AutoModel.from_config(
            AutoConfig.for_model(config["model_type"], **fields), trust_remote_code=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        pooled = getattr(out, "pooler_output", None)
        return torch.flatten(pooled if pooled is not None else out.last_hidden_state[:, 0], 1)


def _timm_backbone(name: str, input_size: int) -> nn.Module:
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # an unknown tag: create_model below says what is wrong
        cfg = None
    fixed = bool(cfg and getattr(cfg, "fixed_input_size", False))
    try:  # fixed-size models (ViTs) are built for input_size; timm resamples position embeddings when loading
        return timm.create_model(name, pretrained=False, num_classes=0, **({"img_size": input_size} if fixed else {}))
    except RuntimeError as exc:
        raise ValueError(f"timm cannot build {name!r}: {exc}") from None


def build_backbone(
    name: str,
    input_size: int = 64,
    width: float = 1.0,
    config: dict | None = None,
    pooling: str | None = None,
    grid_cells: int | None = None,
) -> tuple[nn.Module, int]:
    """A randomly initialised backbone whose forward returns (N, feature_dim) features.

    torchvision models get their classifier (`fc`, `classifier` or `heads`) replaced by
    Identity; `width` scales lightly's small-image ResNets only; `timm:<name>` is built with
    `num_classes=0`; `hf:<model_type>` from the transformers `config` its init recorded. The feature
    dimension is measured with one dummy forward rather than looked up per family, after `pooling`
    (`with_pooling`) is applied.
    """
    if check_backbone_name(name) in SMALL_IMAGE_RESNETS:
        model: nn.Module = SmallImageResNet(name, width)
    elif width != 1.0:
        raise ValueError(
            f"width scales lightly's small-image ResNets ({', '.join(SMALL_IMAGE_RESNETS)}); "
            f"{name!r} has a fixed width, so leave width at 1"
        )
    elif name.startswith("timm:"):
        model = _timm_backbone(name.removeprefix("timm:"), input_size)
    elif name.startswith("hf:"):
        if not config:
            raise ValueError(f"{name!r} is built from the config of a Hugging Face model: set encoder.init=hf:<model>")
        model = HFBackbone(config)
    else:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        for head in ("fc", "classifier", "heads", "head"):
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
                break
        else:
            raise ValueError(f"backbone {name!r} has no classifier attribute to strip")
    if pooling == GRID and not isinstance(model, SmallImageResNet):
        raise ValueError(f"pooling={pooling} reads out lightly's small-image ResNets only, not {name!r}")
    with_pooling(model, pooling, grid_cells)
    model.eval()
    return model, measured_dim(model, input_size)


def measured_dim(model: nn.Module, input_size: int) -> int:
    """The size of the vectors `model` (in the mode it is in) returns for `input_size` px images,
    measured with one forward pass of a dummy batch rather than looked up per family."""
    with torch.no_grad():
        return int(model(torch.zeros(2, 3, input_size, input_size)).flatten(1).shape[1])


@lru_cache(maxsize=32)
def forward_flops(name: str, width: float, input_size: int, config_json: str | None = None) -> float:
    """FLOPs of one image's forward pass (torch's FlopCounterMode): the backbone's cost the
    step budget scales by. Exact and deterministic for a given torch; leaves the RNG as it was.
    `config_json`: an `hf:` backbone's config as JSON (hashable, for the cache)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]):
        model, _ = build_backbone(name, input_size, width, json.loads(config_json) if config_json else None)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size))
    return float(counter.get_total_flops())
