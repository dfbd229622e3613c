"""The invalidation table (docs/concepts/stage-keys.md, once in the README) is exact: it names every
setting, and changing each one changes the keys of exactly the stages it lists (so exactly those
recompute)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from helpers import REPO, SAMPLE_STATS, make_png

from lookalike.core.settings import Settings, load_settings
from lookalike.stages.dataset.sources import list_splits, resolve_source
from lookalike.stages.dataset.stage import dataset_key
from lookalike.stages.embeddings.stage import embeddings_key
from lookalike.stages.encoder.stage import encoder_key
from lookalike.stages.evaluation.stage import choose_query_split, evaluation_key
from lookalike.stages.index.stage import index_key

STAGES = ("dataset", "encoder", "embeddings", "index", "evaluation")
SHA_A, SHA_B = "a" * 40, "b" * 40

# A different valid value for every setting (and a baseline where the default cannot vary).
CHANGES = {
    "dataset.source": "{images}",
    "dataset.revision": ({"dataset.source": "someone/photos", "dataset.revision": SHA_A}, SHA_B),
    "dataset.split": "test",
    # a hub source: a configuration the local sample lacks cannot even list its splits
    "dataset.config_name": ({"dataset.source": "someone/photos", "dataset.revision": SHA_A}, "small"),
    "dataset.image_column": "img",
    "dataset.label_column": "category",
    "dataset.limit": 100,
    "dataset.seed": 1,
    "dataset.max_image_pixels": 1000,
    "dataset.max_side": 256,
    "dataset.max_unreadable_fraction": 0.5,
    "dataset.verify": "full",
    "dataset.num_workers": 0,
    "dataset.metadata_columns": "year",
    "encoder.method": "dino",
    "encoder.backbone": "resnet-18",
    "encoder.width": ({"encoder.backbone": "resnet-9"}, 0.5),
    "encoder.input_size": 64,
    "encoder.epochs": 1,
    "encoder.steps": 500,
    # the sample trains 100 passes (1,100 steps), above the floor the time budget sets; a pass of one step is not
    "encoder.minutes": ({"encoder.batch_size": 2048}, 1),
    "encoder.batch_size": 64,
    "encoder.pooling": "avg",  # the sample is aligned: auto reads out a grid
    "encoder.grid_cells": 2,  # auto: 3x3 at the sample's 28 px
    "encoder.colour_jitter": 0.3,
    "encoder.temperature": 0.1,
    "encoder.lr": 0.01,
    "encoder.lr_schedule": "constant",
    "encoder.weight_decay": 0.1,
    "encoder.seed": 1,
    "encoder.num_workers": 2,
    "encoder.channels_last": False,
    "encoder.augmentation": "per-image",
    "encoder.crop_min_scale": 0.3,
    "encoder.strategy": "ddp",
    "encoder.devices": ({"encoder.strategy": "ddp"}, 2),
    "encoder.num_nodes": ({"encoder.strategy": "ddp"}, 2),
    "encoder.init": "{weights}",
    # a pin of the weights read changes nothing: the key holds their hash either way
    "encoder.init_sha256": ({"encoder.init": "{weights}"}, "{weights_sha256}"),
    "encoder.teacher": ({"encoder.method": "distill", "encoder.teacher": "{weights}"}, "{other_weights}"),
    "encoder.teacher_sha256": (
        {"encoder.method": "distill", "encoder.teacher": "{weights}"},
        "{weights_sha256}",
    ),
    "embeddings.shard_size": 512,
    "embeddings.batch_size": 64,
    "embeddings.num_workers": 2,
    "embeddings.channels_last": False,
    "embeddings.retries": 0,
    "embeddings.reuse": False,
    "embeddings.dask_workers": 2,
    "embeddings.dask_address": "tcp://scheduler:8786",
    "embeddings.shards_per_task": 4,
    "index.type": "hnsw",
    "index.whitening": 0,
    "index.nlist": 8,
    "index.nprobe": 4,
    "index.ef_search": 32,
    "index.refine_k_factor": 8,
    "index.memory_budget": ({"index.type": "auto"}, "24MB"),
    "index.recall_target": ({"index.type": "auto"}, 0.9),
    "index.dedupe": "exact",
    "evaluation.k": 5,
    "evaluation.grid_queries": 4,
    "evaluation.grid_neighbours": 3,
    "evaluation.query_split": "none",
    "evaluation.max_queries": 100,
    "evaluation.baselines": ("pixels",),
    "evaluation.duplicates": False,
    "evaluation.sample_size": 100,  # of the sample's 3,000 images (SAMPLE_STATS): keyed
    "promotion.min_self_retrieval_at_1": 0.5,
    "promotion.min_recall_at_10": 0.5,
    "promotion.max_knn_drop": 0.5,
    "promotion.min_gain_over_pixels": 0.1,
    "promotion.min_gain_over_init": -0.1,
    "promotion.min_teacher_fraction": 0.95,
    "tracking.mode": "disabled",
    "tracking.project": "other",
    "tracking.entity": "team",
    "tracking.api_key_secret": "wandb-api-key",
    "mirror.url": "s3://bucket/prefix",
    "mirror.endpoint_url": "http://localhost:9000",
    "mirror.stages": ("encoder", "index"),
    "mirror.retries": 0,
    "mirror.credentials_secret": "aws-credentials",
}


def all_settings() -> set[str]:
    return {
        f"{section}.{name}"
        for section, field in Settings.model_fields.items()
        if hasattr(field.annotation, "model_fields")
        for name in field.annotation.model_fields
    }


def readme_table() -> dict[str, set[str]]:
    """setting -> stages it invalidates, from the documentation's table (wildcards expanded)."""
    text = (REPO / "docs" / "concepts" / "stage-keys.md").read_text()
    table = text[text.index("| setting | default | stages it invalidates |") :].split("\n\n")[0]
    out: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        names_cell, _, stages_cell = [c.strip() for c in row.strip("|").split("|")][:3]
        stages = (
            set(STAGES)
            if stages_cell == "all"
            else set()
            if stages_cell == "none"
            else {s.strip() for s in stages_cell.split(",")}
        )
        section = None
        for name in re.findall(r"`([^`]+)`", names_cell):
            if "." in name:
                section, name = name.split(".", 1)
            names = (
                [n.split(".", 1)[1] for n in all_settings() if n.startswith(f"{section}.")] if name == "*" else [name]
            )
            for n in names:
                out[f"{section}.{n}"] = stages
    return out


def keys(settings: Settings, cache_dir) -> dict[str, str]:
    m = SimpleNamespace
    dataset = dataset_key(settings.dataset)[0]
    encoder = encoder_key(settings.encoder, m(key=dataset, stats=SAMPLE_STATS))
    embeddings = embeddings_key(settings.embeddings, m(key=dataset), m(key=encoder))
    index = index_key(settings.index, m(key=embeddings))
    # the held-out query split the flow would snapshot (listing a hub dataset's splits needs the
    # network, so here a hub dataset offers only its indexed split)
    hub = resolve_source(settings.dataset).kind == "hub"
    splits = [settings.dataset.split] if hub else list_splits(settings.dataset, cache_dir)
    queries = choose_query_split(settings.dataset, settings.evaluation, splits)
    evaluation = evaluation_key(
        settings.evaluation,
        m(key=dataset, stats=SAMPLE_STATS),
        m(key=index),
        m(key=dataset_key(queries)[0]) if queries else None,
    )
    return dict(zip(STAGES, (dataset, encoder, embeddings, index, evaluation)))


def test_every_setting_is_in_the_table_and_has_a_change_to_try():
    assert set(readme_table()) == all_settings()
    assert set(CHANGES) == all_settings()


def encoder_files(folder) -> dict[str, str]:
    """Two lookalike encoder checkpoints (different seeds) to start from or distil, and the first one's hash."""
    import torch

    from lookalike.stages.encoder.backbones import build_backbone
    from lookalike.stages.encoder.checkpoint import EncoderSpec, save_encoder
    from lookalike.stages.encoder.pretrained import read_init

    out = {}
    for seed, name in ((0, "weights"), (1, "other_weights")):
        torch.manual_seed(seed)
        model, dim = build_backbone("resnet-9", 16, 0.25)
        spec = EncoderSpec(
            architecture="resnet-9", width=0.25, feature_dim=dim, input_size=16,
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), method="simclr",
        )  # fmt: skip
        save_encoder(folder / f"{name}.pt", model, spec)
        out[name] = str(folder / f"{name}.pt")
    out["weights_sha256"] = read_init(out["weights"], folder, "resnet-9", 0.25).sha256()
    return out


@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_changing_a_setting_changes_exactly_the_keys_the_table_lists(setting, tmp_path):
    images = tmp_path / "images"
    for i in range(3):
        make_png(images / f"{i}.png", i)
    change = CHANGES[setting]
    base, value = change if isinstance(change, tuple) and isinstance(change[0], dict) else ({}, change)
    files = encoder_files(tmp_path) if "{" in f"{base}{value}" and "{images}" != value else {}
    files["images"] = str(images)
    base = {k: v.format(**files) if isinstance(v, str) else v for k, v in base.items()}
    value = value.format(**files) if isinstance(value, str) else value
    before = keys(load_settings(base), tmp_path / "hf")
    after = keys(load_settings({**base, setting: value}), tmp_path / "hf")
    changed = {stage for stage in STAGES if before[stage] != after[stage]}
    assert changed == readme_table()[setting]


def test_the_same_content_elsewhere_is_the_same_dataset_key(tmp_path):
    for folder in ("a", "b"):
        for i in range(3):
            make_png(tmp_path / folder / f"{i}.png", i)
    assert keys(load_settings({"dataset.source": str(tmp_path / "a")}), tmp_path / "hf") == keys(
        load_settings({"dataset.source": str(tmp_path / "b")}), tmp_path / "hf"
    )


def test_query_split_auto_and_the_split_it_picks_share_an_evaluation_key(tmp_path):
    auto = keys(load_settings({}), tmp_path / "hf")
    assert keys(load_settings({"evaluation.query_split": "test"}), tmp_path / "hf") == auto
    assert keys(load_settings({"evaluation.query_split": "none"}), tmp_path / "hf")["evaluation"] != auto["evaluation"]
