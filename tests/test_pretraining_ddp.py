"""encoder.strategy=ddp: pretraining under Lightning's DDP on 2 CPU processes (gloo), and the
checkpoint it exports embedding in the ordinary single-process embeddings stage."""

import time

import numpy as np
import pytest

from conftest import TINY

from lib.config import SettingsError, load_settings
from lib.data.snapshot import run_dataset_stage
from lib.embedding import load_embeddings, run_embeddings_stage
from lib.encoder import load_encoder
from lib.manifest import MANIFEST, stage_dir
from lib.pretraining import DDP_CHECKPOINTS, encoder_key, run_encoder_stage


def test_a_ddp_checkpoint_from_two_cpu_processes_embeds_in_the_single_process_stage(root):
    settings = load_settings({**TINY, "artifacts_root": str(root), "encoder.strategy": "ddp", "encoder.devices": 2})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    started = time.perf_counter()
    result = run_encoder_stage(settings.encoder, dataset, root)
    seconds = time.perf_counter() - started
    folder = stage_dir(root, "encoder", result.manifest.key)
    assert result.status == "computed" and (folder / MANIFEST).is_file()
    stats = result.manifest.stats
    assert (stats["strategy"], stats["world_size"], stats["batch_size_per_process"]) == ("ddp", 2, 8)
    assert len(stats["losses"]) == 1 and np.isfinite(stats["losses"][0])
    assert not (folder / DDP_CHECKPOINTS).exists()  # Lightning's resume state goes once the manifest exists
    print(f"ddp pretraining on 2 processes took {seconds:.1f} s")

    model, spec = load_encoder(root, result.manifest)  # the same self-describing format as a single run's
    embeddings = run_embeddings_stage(settings.embeddings, dataset, result.manifest, root).manifest
    vectors, row_ids = load_embeddings(root, embeddings)
    assert vectors.shape == (48, spec.feature_dim) and np.isfinite(vectors).all()
    assert list(row_ids) == sorted(row_ids)


def test_several_processes_without_ddp_are_refused_with_the_fix():
    with pytest.raises(SettingsError) as info:
        load_settings({"encoder.devices": 2})
    assert "encoder: devices=2" in str(info.value) and "set encoder.strategy=ddp" in str(info.value)
    with pytest.raises(SettingsError, match="num_nodes=2"):
        load_settings({"encoder.num_nodes": 2})


def test_a_ddp_batch_too_small_to_split_is_refused():
    with pytest.raises(SettingsError, match="raise encoder.batch_size"):
        load_settings({"encoder.strategy": "ddp", "encoder.devices": 4, "encoder.batch_size": 4})


def test_scale_out_settings_are_keyed_only_under_ddp():
    from types import SimpleNamespace

    dataset = SimpleNamespace(key="d" * 16)
    single = load_settings({}).encoder
    assert not {"strategy", "devices", "num_nodes"} & set(single.key_fields())  # single-run keys are unchanged
    ddp = load_settings({"encoder.strategy": "ddp"}).encoder
    ddp2 = load_settings({"encoder.strategy": "ddp", "encoder.devices": 2}).encoder
    assert len({encoder_key(s, dataset) for s in (single, ddp, ddp2)}) == 3
