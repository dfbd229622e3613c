"""torchvision backbones with their classifier removed, so they output features."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=1)
def _classification_models() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_backbone_name(name: str) -> str:
    """Validate a torchvision classification architecture name (for settings)."""
    known = _classification_models()
    if name not in known:
        close = [m for m in known if m.startswith(name[:4])][:8]
        hint = f"; similar: {', '.join(close)}" if close else "; e.g. resnet18, resnet50, mobilenet_v3_small"
        raise ValueError(f"unknown torchvision backbone {name!r}{hint}")
    return name


def build_backbone(name: str, input_size: int = 64) -> tuple[nn.Module, int]:
    """A randomly initialised backbone whose forward returns (N, feature_dim) features.

    The classifier (`fc`, `classifier` or `heads`) is replaced by Identity; the feature
    dimension is measured with one dummy forward rather than looked up per family.
    """
    import torchvision

    model = torchvision.models.get_model(check_backbone_name(name), weights=None)
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(model, head):
            setattr(model, head, nn.Identity())
            break
    else:
        raise ValueError(f"backbone {name!r} has no classifier attribute to strip")
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(2, 3, input_size, input_size)).flatten(1).shape[1]
    return model, int(dim)
