"""The self-describing encoder checkpoint: backbone weights plus what rebuilds them.

`encoder.pt` holds only tensors and plain values, so it loads with
`torch.load(weights_only=True)`; nothing in it can execute code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import Manifest, atomic_path, verified_path
from lookalike.stages.encoder.backbones import Projected, build_backbone

ENCODER_FILE = "encoder.pt"
FORMAT = 1


class EncoderSpec(BaseModel):
    """Everything embedding and serving need to rebuild and feed the encoder."""

    model_config = ConfigDict(frozen=True)
    architecture: str
    width: float = 1.0  # lightly small-image ResNets only; checkpoints from before it are width 1
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    method: str
    format: int = FORMAT
    config: dict | None = None  # hf: backbones: the transformers config that rebuilds them (plain values)
    init_sha256: str | None = None  # what training started from (`lookalike.stages.encoder.pretrained`)
    projection: int | None = None  # a distilled student: a linear map from the backbone's features to this dim
    pooling: str | None = None  # how features are read out (`backbones.with_pooling`); None: avg, as before it existed
    grid_cells: int | None = None  # pooling=grid: cells per side; None: 2, as before it was recorded


class EncoderLoadError(LookalikeError, RuntimeError):
    """The checkpoint is not a lookalike encoder (or not weights-only)."""


def save_encoder(path: Path, backbone: nn.Module, spec: EncoderSpec) -> None:
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    save_atomically(path, {"spec": spec.model_dump(exclude_none=True), "state_dict": state})


def save_atomically(path: Path, payload: dict) -> None:
    """`torch.save` to `path` through a temp file renamed over it, written through a file object:
    torch names the zip records after a path's stem (the temp file's name would make identical
    weights hash differently), and a write that fails (a full disk) raises its OSError, where torch
    writing to a path raises "RuntimeError: ... unexpected pos"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)


def load_encoder_file(path: Path) -> tuple[nn.Module, EncoderSpec]:
    """Rebuild the backbone from a checkpoint file, refusing anything but weights."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderLoadError(
            f"{path} is not a weights-only encoder checkpoint ({type(exc).__name__}); "
            "refusing to load it. Rebuild it with `lookalike run`."
        ) from None
    if not isinstance(payload, dict) or "spec" not in payload or "state_dict" not in payload:
        raise EncoderLoadError(f"{path} is not a lookalike encoder checkpoint (missing spec/state_dict)")
    spec = EncoderSpec.model_validate(payload["spec"])
    backbone, dim = build_backbone(
        spec.architecture, spec.input_size, spec.width, spec.config, spec.pooling, spec.grid_cells
    )
    if spec.projection:
        backbone = Projected(backbone, nn.Linear(dim, spec.projection))
    backbone.load_state_dict(payload["state_dict"])
    return backbone.eval(), spec


def load_encoder(root: Path, manifest: Manifest) -> tuple[nn.Module, EncoderSpec]:
    """Load a finished encoder stage's checkpoint after verifying its sha256."""
    return load_encoder_file(verified_path(root, manifest, ENCODER_FILE))
