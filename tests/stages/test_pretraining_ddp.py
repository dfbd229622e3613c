"""encoder.strategy=ddp: the encoder's one training loop under Fabric's DDP on 2 CPU processes (gloo), and
the checkpoint it exports embedding in the ordinary single-process embeddings stage."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import REPO, SAMPLE_STATS, TINY, free_port

from lookalike.core.manifest import MANIFEST, stage_dir
from lookalike.core.settings import SettingsError, load_settings
from lookalike.stages.dataset.stage import run_dataset_stage
from lookalike.stages.embeddings.shards import load_embeddings
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.checkpoint import load_encoder
from lookalike.stages.encoder.stage import encoder_key, run_encoder_stage
from lookalike.stages.encoder.training import TRAIN_STATE


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
    assert not (folder / TRAIN_STATE).exists()  # the resume state goes once the manifest exists
    print(f"ddp pretraining on 2 processes took {seconds:.1f} s")

    model, spec = load_encoder(root, result.manifest)  # the same self-describing format as a single run's
    embeddings = run_embeddings_stage(settings.embeddings, dataset, result.manifest, root).manifest
    vectors, row_ids = load_embeddings(root, embeddings)
    assert vectors.shape == (48, spec.feature_dim) and np.isfinite(vectors).all()
    assert list(row_ids) == sorted(row_ids)


@pytest.mark.parametrize("method, augmentation", [("dino", "batched"), ("byol", "per-image")])
def test_the_momentum_methods_train_under_ddp(root, method, augmentation):
    """dino's weight-normed head cannot cross a process boundary: each process builds the method itself."""
    settings = load_settings(
        {
            **TINY,
            "artifacts_root": str(root),
            "encoder.strategy": "ddp",
            "encoder.devices": 2,
            "encoder.method": method,
            "encoder.augmentation": augmentation,
        }
    )
    result = run_encoder_stage(settings.encoder, run_dataset_stage(settings.dataset, root).manifest, root)
    assert result.manifest.stats["world_size"] == 2 and np.isfinite(result.manifest.stats["losses"]).all()
    model, spec = load_encoder(root, result.manifest)
    assert spec.method == method


def test_under_torchrun_rank_0_builds_the_stage_and_the_other_rank_trains_with_it_then_reuses_it(tmp_path):
    """torchrun starts both processes, each running the whole pipeline: Lightning joins them instead of
    spawning, rank 0 (holding the stage lock) exports, rank 1 trains alongside it and then finds the manifest."""
    job = tmp_path / "job.py"
    job.write_text(
        textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import TINY
        from lookalike.core.settings import load_settings
        from lookalike.stages.dataset.stage import run_dataset_stage
        from lookalike.stages.encoder.stage import run_encoder_stage
        root = {str(tmp_path / "artifacts")!r}
        s = load_settings({{**TINY, "artifacts_root": root, "encoder.strategy": "ddp", "encoder.devices": 2}})
        r = run_encoder_stage(s.encoder, run_dataset_stage(s.dataset, root).manifest, root)
        line = f"rank {{os.environ['RANK']}} {{r.status}} {{r.manifest.stats['world_size']}} {{r.manifest.file('encoder.pt').sha256}}"
        with open(os.path.join({str(tmp_path)!r}, "rank-" + os.environ["RANK"]), "w") as fh:  # stdout interleaves
            fh.write(line)
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", str(job)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [(tmp_path / f"rank-{rank}").read_text().split() for rank in (0, 1)]
    assert [line[:4] for line in lines] == [["rank", "0", "computed", "2"], ["rank", "1", "cached", "2"]]
    assert lines[0][4] == lines[1][4]  # one encoder.pt


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

    dataset = SimpleNamespace(key="d" * 16, stats=SAMPLE_STATS)
    single = load_settings({}).encoder
    assert not {"strategy", "devices", "num_nodes"} & set(single.key_fields())  # single-run keys are unchanged
    ddp = load_settings({"encoder.strategy": "ddp"}).encoder
    ddp2 = load_settings({"encoder.strategy": "ddp", "encoder.devices": 2}).encoder
    assert len({encoder_key(s, dataset) for s in (single, ddp, ddp2)}) == 3


def test_a_ddp_run_killed_in_epoch_2_on_one_machine_resumes_on_another_through_an_s3_root(s3_endpoint, tmp_path):
    """Machine A (a process group SIGKILLed once epoch 1's train state is in the bucket, i.e. in
    epoch 2) and machine B (an empty copy of the same s3:// root): B pulls the checkpoint and
    trains only epoch 2. (This is also the test of resuming a ddp run from its last checkpoint: a
    local root takes the same path without the bucket.)"""
    from helpers import kill_when

    from lookalike.artifacts.s3 import s3_client
    from lookalike.artifacts.shared_root import open_root

    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="ddp")
    overrides = {
        **TINY,
        "artifacts_root": "s3://ddp/run",
        "mirror.endpoint_url": s3_endpoint,
        "encoder.strategy": "ddp",
        "encoder.devices": 2,
        "encoder.epochs": 2,
        "encoder.lr_schedule": "constant",
        "dataset.limit": 160,  # 10 steps an epoch: epoch 2 lasts long enough to be killed in
        "artifacts_lease_seconds": 3.0,
    }  # A dies holding the encoder's lease: B waits this long for it
    job = tmp_path / "machine_a.py"
    job.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from helpers import TINY
        from lookalike.core.settings import load_settings
        from lookalike.stages.dataset.stage import run_dataset_stage
        from lookalike.stages.encoder.stage import run_encoder_stage
        from lookalike.artifacts.shared_root import open_root
        if __name__ == "__main__":
            s = load_settings({{**{overrides!r}, "artifacts_cache": {str(tmp_path / "machine-a")!r}}})
            root = open_root(s)
            run_encoder_stage(s.encoder, run_dataset_stage(s.dataset, root).manifest, root)
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(job)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def checkpoint_in_bucket() -> bool:
        listed = client.list_objects_v2(Bucket="ddp", Prefix="run/encoder/").get("Contents", [])
        return any(o["Key"].endswith(f"/{TRAIN_STATE}") for o in listed)

    kill_when(proc, checkpoint_in_bucket)
    listed = client.list_objects_v2(Bucket="ddp", Prefix="run/encoder/").get("Contents", [])
    assert not any(o["Key"].endswith(MANIFEST) for o in listed), "machine A finished before it was killed"

    on_b = load_settings({**overrides, "artifacts_cache": str(tmp_path / "machine-b")})
    root_b = open_root(on_b)
    assert not (root_b / "encoder").exists() and not (root_b / "dataset").exists()
    dataset = run_dataset_stage(on_b.dataset, root_b).manifest  # cached: fetched from the bucket
    seen = []
    result = run_encoder_stage(on_b.encoder, dataset, root_b, on_epoch=lambda *a: seen.append(a[0]))
    assert result.status == "resumed" and result.manifest.stats["resumed_from_epoch"] == 1
    assert len(result.manifest.stats["losses"]) == 2 and seen == [2]  # epoch 1 was not trained again
    assert result.manifest.stats["steps"] == 20
    load_encoder(root_b, result.manifest)
    # and it is the encoder an uninterrupted run trains, to the bit: every process resumes from rank 0's state
    # with the seeds of each pass and rank
    local = load_settings({**overrides, "artifacts_root": str(tmp_path / "uninterrupted")})
    root_c = tmp_path / "uninterrupted"
    uninterrupted = run_encoder_stage(local.encoder, run_dataset_stage(local.dataset, root_c).manifest, root_c).manifest
    assert uninterrupted.key == result.manifest.key and uninterrupted.stats["losses"] == result.manifest.stats["losses"]
    assert uninterrupted.file("encoder.pt").sha256 == result.manifest.file("encoder.pt").sha256
