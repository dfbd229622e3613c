"""The registry of names: SSL methods, backbones and index presets, checked without torch or FAISS.

Settings validate names here, so a typo is reported before anything heavy loads (timm keeps its
registry on the ground floor the same way). The floors above build what the names mean:
`lookalike.stages.encoder.methods` (one module per method), `lookalike.stages.encoder.backbones`,
`lookalike.stages.index.factory` (FAISS). Tests check each list against what builds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Literal, get_args

from lookalike.core.errors import brief

Method = Literal["dino", "simclr", "byol", "distill"]
METHOD_NAMES: tuple[str, ...] = get_args(Method)
Pooling = Literal["avg", "grid"]  # encoder.pooling: one average of the last map, or a grid of it
AVG: Pooling = "avg"
GRID: Pooling = "grid"

# Backbone families named by a prefix: `timm:<model name>` (any timm model, its classifier removed) and
# `hf:<model_type>` (a transformers vision model, rebuilt from the config its init recorded).
BACKBONE_PREFIXES = ("timm:", "hf:")
# Where `encoder.init` and `encoder.teacher` can start from (`lookalike.stages.encoder.pretrained`):
# these prefixes, or else a local weights file or `save_pretrained` folder.
INIT_PREFIXES = ("lookalike:", "torchvision:", "timm:", "hf:")

# lightly.models.ResNetGenerator's names: a 3x3 stem with no max-pool, for images under ~64 px.
SMALL_IMAGE_RESNETS = ("resnet-9", "resnet-18", "resnet-34", "resnet-50", "resnet-101", "resnet-152")
# torchvision.models.list_models(module=torchvision.models) of the pinned torchvision
# (tests/core/test_names.py fails when an upgrade changes it).
TORCHVISION_MODELS = (
    "alexnet",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_l",
    "efficientnet_v2_m",
    "efficientnet_v2_s",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mnasnet0_75",
    "mnasnet1_0",
    "mnasnet1_3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_16gf",
    "regnet_x_1_6gf",
    "regnet_x_32gf",
    "regnet_x_3_2gf",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_8gf",
    "regnet_y_128gf",
    "regnet_y_16gf",
    "regnet_y_1_6gf",
    "regnet_y_32gf",
    "regnet_y_3_2gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_8gf",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext50_32x4d",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet101_2",
    "wide_resnet50_2",
)


# How many neighbours a query returns unless it asks for another number: one default for the CLI,
# the HTTP API, the UI and the Python API; MAX_K bounds what any of them may ask for.
TOP_K = 5
MAX_K = 100
# Many queries (a folder for `lookalike query`, a list for the Python API) are decoded, embedded and
# searched this many at a time: bounded memory, batched inference and search
QUERY_CHUNK = 256


@dataclass(frozen=True)
class IndexPresetSpec:
    """A named FAISS index: its factory string (placeholders {nlist}, {m}, {nbits} are filled
    from N and dim when it is built), metric ("l2", or "ip" = cosine on normalised vectors), exactness."""

    factory: str
    metric: str
    exact: bool


INDEX_PRESETS: dict[str, IndexPresetSpec] = {
    "flat-l2": IndexPresetSpec("Flat", "l2", exact=True),  # the article's IndexFlatL2
    "flat-ip": IndexPresetSpec("Flat", "ip", exact=True),
    "hnsw": IndexPresetSpec("HNSW32", "l2", exact=False),
    "sq8": IndexPresetSpec("SQ8", "l2", exact=False),
    "sq-fp16": IndexPresetSpec("SQfp16", "l2", exact=False),
    "ivf-flat": IndexPresetSpec("IVF{nlist},Flat", "l2", exact=False),
    "ivf-sq8": IndexPresetSpec("IVF{nlist},SQ8", "l2", exact=False),
    # np: no polysemous training, which took 10x longer (311 s vs 29 s on 60k x 784) for the same recall
    "ivf-pq": IndexPresetSpec("IVF{nlist},PQ{m}x{nbits}np", "l2", exact=False),
    # 4-bit fast-scan PQ picks candidates, exact distances re-rank k_factor x k of them:
    # the fastest preset at recall@10 >= 0.95 in benchmarks/index_presets.py
    "ivf-pqfs-rflat": IndexPresetSpec("IVF{nlist},PQ{m}x4fs,RFlat", "l2", exact=False),
}
AUTO = "auto"
IndexPreset = Literal[
    "flat-l2", "flat-ip", "hnsw", "sq8", "sq-fp16", "ivf-flat", "ivf-sq8", "ivf-pq", "ivf-pqfs-rflat", "auto"
]
# The words FAISS's index_factory reads (faiss/index_factory.cpp): transforms, coarse quantizers,
# codecs and wrappers. A raw factory string is a comma-separated list of components each
# starting with one of them (IVF1024, PQ16x4fs, HNSW32_PQ8, OPQ16_64, Refine(SQfp16), ...); FAISS
# itself checks the numbers when the index stage builds it, and says what is wrong.
FAISS_FACTORY_WORDS = (
    "IVF",
    "IMI",
    "IDMap2",
    "IDMap",
    "FlatDedup",
    "Flat",
    "HNSW",
    "NSG",
    "NNDescent",
    "PQ",
    "SQ",
    "RQ",
    "LSQ",
    "PRQ",
    "PLSQ",
    "ZnLattice",
    "LSH",
    "RFlat",
    "Refine",
    "PCAWR",
    "PCAW",
    "PCAR",
    "PCA",
    "OPQ",
    "ITQ",
    "RR",
    "Pad",
    "L2norm",
    "Residual",
    "RaBitQ",
)
_FACTORY = re.compile(r"^(" + "|".join(FAISS_FACTORY_WORDS) + r")[A-Za-z0-9_]*(\([A-Za-z0-9_,]*\))?$")


def check_backbone_name(name: str) -> str:
    """Validate a backbone name: a torchvision classification model, a lightly small-image ResNet,
    or `timm:<name>` / `hf:<model_type>` (their libraries judge the rest when the backbone is built)."""
    if name in SMALL_IMAGE_RESNETS or name in TORCHVISION_MODELS:
        return name
    prefix = next((p for p in BACKBONE_PREFIXES if name.startswith(p)), None)
    if prefix and re.fullmatch(r"[A-Za-z0-9_.\-/]+", name[len(prefix) :]):
        return name
    known = TORCHVISION_MODELS + SMALL_IMAGE_RESNETS
    close = [m for m in TORCHVISION_MODELS if m.startswith(name[:4])][:8]
    close += [m for m in SMALL_IMAGE_RESNETS if m.startswith(name[:4])][:2]
    close = close or get_close_matches(name, known, n=4)
    hint = f"; similar: {', '.join(close)}" if close else "; e.g. resnet-9, resnet18, resnet50, mobilenet_v3_small"
    raise ValueError(f"unknown torchvision backbone {brief(name)}{hint}")


def check_init_reference(reference: str) -> str:
    """Validate the shape of an `encoder.init` / `encoder.teacher` reference (no loading here)."""
    reference = reference.strip()
    if not reference:
        raise ValueError("an empty init reference: leave encoder.init unset to start from random weights")
    prefix = next((p for p in INIT_PREFIXES if reference.startswith(p)), None)
    if prefix is not None and not reference[len(prefix) :].strip():
        raise ValueError(f"{brief(reference)} names no model after {prefix!r}")
    return reference


def split_metric(name: str) -> tuple[str, str]:
    """`ip:HNSW32` -> ("ip", "HNSW32"); no prefix means l2."""
    metric, _, factory = name.rpartition(":")
    if metric not in ("", "ip", "l2"):
        raise ValueError(f"unknown metric prefix {brief(metric)} in {brief(name)}; use ip: or l2:")
    return metric or "l2", factory


def check_index_type(name: str) -> str:
    """Validate a preset name, `auto`, or the shape of a raw FAISS factory string (for settings).

    Needs no FAISS, so a misspelt preset or factory word fails as soon as settings load; FAISS
    itself judges the numbers in a raw string when the index stage builds it.
    """
    if name in INDEX_PRESETS or name == AUTO:
        return name
    _, factory = split_metric(name)
    parts = _components(factory)
    if not parts or not all(_FACTORY.match(part) for part in parts):
        close = get_close_matches(name, [*INDEX_PRESETS, AUTO], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown index type {brief(name)}: not a preset ({', '.join(INDEX_PRESETS)}), not {AUTO} "
            f"and not a FAISS factory string that FAISS accepts{hint}"
        )
    return name


def _components(factory: str) -> list[str]:
    """Top-level comma-separated parts (commas inside parentheses stay in their part)."""
    parts, depth, current = [], 0, ""
    for char in factory.strip():
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if current or parts else []
