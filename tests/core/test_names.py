"""The registry of names in core agrees with what the floors above build from it."""

from __future__ import annotations

import faiss
import pytest
import torchvision

from lookalike.core.names import (
    AUTO,
    INDEX_PRESETS,
    METHOD_NAMES,
    SMALL_IMAGE_RESNETS,
    TORCHVISION_MODELS,
    check_backbone_name,
    check_index_type,
)
from lookalike.stages.encoder.methods import METHODS
from lookalike.stages.index.factory import PRESETS, plan_factory, resolve_index_type


def test_the_torchvision_list_is_the_installed_torchvisions():
    assert TORCHVISION_MODELS == tuple(torchvision.models.list_models(module=torchvision.models)), (
        "torchvision changed: regenerate lookalike.core.names.TORCHVISION_MODELS from list_models()"
    )


def test_every_method_name_has_a_method_module():
    assert set(METHOD_NAMES) == set(METHODS)


@pytest.mark.parametrize("name", sorted(INDEX_PRESETS))
def test_every_preset_is_a_factory_faiss_builds(name):
    kind = plan_factory(PRESETS[name], 20_000, 64)
    faiss.index_factory(64, kind.factory, kind.faiss_metric)
    assert check_index_type(name) == name


@pytest.mark.parametrize(
    "factory",
    [
        "Flat",
        "HNSW32",
        "IVF64,Flat",
        "IVF64,PQ16x4fs,RFlat",
        "ip:HNSW8",
        "SQfp16",
        "OPQ16_64,IVF64,PQ16",
        "PCAR32,IVF64,SQ8",
        "IDMap2,Flat",
        "HNSW32_PQ8",
        "IVF64,SQ8,Refine(Flat)",
        "LSH",
    ],
)
def test_raw_factory_strings_faiss_accepts_pass_the_torch_free_check(factory):
    assert check_index_type(factory) == factory
    kind = resolve_index_type(factory)
    faiss.index_factory(64, kind.factory, kind.faiss_metric)


@pytest.mark.parametrize("bad", ["nonsense", "NoSuchIndex", "flat-l3", "Flt", "", "IVF64,", "xx:Flat", "ivf64,flat"])
def test_misspelt_index_types_are_refused_naming_the_presets(bad):
    with pytest.raises(ValueError, match="index type|metric prefix"):
        check_index_type(bad)


def test_a_misspelt_preset_gets_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'flat-l2'"):
        check_index_type("flat-l3")


@pytest.mark.parametrize("name", [*SMALL_IMAGE_RESNETS, "resnet18", "resnet50", "vit_b_16", "mobilenet_v3_small"])
def test_known_backbones_pass(name):
    assert check_backbone_name(name) == name


def test_an_unknown_backbone_names_similar_ones():
    with pytest.raises(ValueError, match="unknown torchvision backbone 'resnet-7'; similar: .*resnet-9"):
        check_backbone_name("resnet-7")


def test_auto_is_an_index_type():
    assert check_index_type(AUTO) == AUTO
