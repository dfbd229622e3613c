"""Incremental add: a grown image folder, indexed with the same encoder, embeds only its new
images; the rest take the vectors an earlier embeddings stage stored, matched by content
sha256 (so a renamed file is not embedded again), after that stage's files verify."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import make_png

from lookalike.core.manifest import MANIFEST, stage_dir
from lookalike.core.settings import load_settings
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage
from lookalike.stages.embeddings.reuse import reuse_candidates
from lookalike.stages.embeddings.shards import load_embeddings, shard_name
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.stage import run_encoder_stage

N, ADDED = 30, 3  # 10% new images
SHARD = 8


def settings_for(images: Path, root: Path, **overrides):
    return load_settings(
        {
            "dataset.source": str(images),
            "encoder.epochs": 0,
            "encoder.input_size": 16,
            "embeddings.shard_size": SHARD,
            "embeddings.batch_size": 4,
            "evaluation.grid_queries": 2,
            "evaluation.grid_neighbours": 2,
            "artifacts_root": str(root),
            **overrides,
        }
    )


def vectors_by_sha(root: Path, dataset, embeddings) -> dict[str, np.ndarray]:
    vectors, row_ids = load_embeddings(root, embeddings)
    snapshot = open_snapshot(root, dataset)
    assert list(row_ids) == list(snapshot["row_id"])
    return dict(zip(snapshot["sha256"], vectors))


def copy_stage(src: Path, dst: Path, stage: str, *keys: str) -> None:
    for key in keys:
        shutil.copytree(src / stage / key, dst / stage / key)
    if (src / stage / "parts").is_dir():  # a dataset version's images live in the parts it shares
        shutil.copytree(src / stage / "parts", dst / stage / "parts", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """Index N images; then add 10%, rename one and delete one, and index again with the same encoder."""
    base = tmp_path_factory.mktemp("incremental")
    images, root = base / "images", base / "artifacts"
    for i in range(N):
        make_png(images / f"img-{i:02d}.png", i)
    first = settings_for(images, root)
    dataset1 = run_dataset_stage(first.dataset, root).manifest
    encoder = run_encoder_stage(first.encoder, dataset1, root).manifest
    embeddings1 = run_embeddings_stage(first.embeddings, dataset1, encoder, root).manifest

    deleted = (images / "img-07.png").read_bytes()
    (images / "img-07.png").unlink()
    (images / "img-05.png").rename(images / "zz-renamed.png")  # sorts last: a new row id
    for i in range(ADDED):
        make_png(images / f"new-{i}.png", 100 + i)
    settings = settings_for(images, root)
    dataset2 = run_dataset_stage(settings.dataset, root).manifest
    result = run_embeddings_stage(settings.embeddings, dataset2, encoder, root)
    return SimpleNamespace(
        base=base,
        images=images,
        root=root,
        settings=settings,
        encoder=encoder,
        dataset1=dataset1,
        embeddings1=embeddings1,
        dataset2=dataset2,
        result=result,
        deleted_sha=hashlib.sha256(deleted).hexdigest(),
    )


@pytest.fixture(scope="module")
def scratch(grown):
    """The grown dataset embedded from scratch (reuse off) in a root of its own."""
    root = grown.base / "scratch"
    copy_stage(grown.root, root, "dataset", grown.dataset2.key)
    copy_stage(grown.root, root, "encoder", grown.encoder.key)
    section = grown.settings.embeddings.model_copy(update={"reuse": False})
    manifest = run_embeddings_stage(section, grown.dataset2, grown.encoder, root).manifest
    return root, manifest


def test_grown_dataset_embeds_only_new_images_and_reuses_the_rest(grown):
    stats = grown.result.manifest.stats
    assert grown.result.status == "computed"
    assert (stats["n_vectors"], stats["images_embedded"], stats["images_reused"]) == (N + ADDED - 1, ADDED, N - 1)
    assert stats["reused_from"] == [grown.embeddings1.key] and stats["reuse_rejected"] == []

    before = vectors_by_sha(grown.root, grown.dataset1, grown.embeddings1)
    after = vectors_by_sha(grown.root, grown.dataset2, grown.result.manifest)
    kept = set(before) & set(after)
    assert len(kept) == N - 1 and len(set(after) - kept) == ADDED
    for sha in kept:  # the renamed image included
        np.testing.assert_array_equal(after[sha], before[sha])


def test_a_deleted_image_is_in_neither_the_embeddings_nor_the_index(grown):
    from lookalike.stages.index.factory import load_index, search
    from lookalike.stages.index.stage import run_index_stage

    after = vectors_by_sha(grown.root, grown.dataset2, grown.result.manifest)
    assert grown.deleted_sha not in after
    index_manifest = run_index_stage(grown.settings.index, grown.result.manifest, grown.root).manifest
    assert index_manifest.stats["ntotal"] == N + ADDED - 1
    deleted_vector = vectors_by_sha(grown.root, grown.dataset1, grown.embeddings1)[grown.deleted_sha]
    distances, ids = search(load_index(grown.root, index_manifest), deleted_vector[None], 1)
    assert ids[0, 0] in set(open_snapshot(grown.root, grown.dataset2)["row_id"]) and distances[0, 0] > 0


def test_reused_vectors_match_embedding_everything_with_reuse_off(grown, scratch):
    root, manifest = scratch
    assert manifest.key == grown.result.manifest.key  # reuse is not part of the key
    assert (manifest.stats["images_embedded"], manifest.stats["images_reused"]) == (N + ADDED - 1, 0)
    reused, _ = load_embeddings(grown.root, grown.result.manifest)
    fresh, _ = load_embeddings(root, manifest)
    np.testing.assert_allclose(reused, fresh, rtol=1e-4, atol=1e-5)


def test_a_killed_incremental_run_resumes_its_finished_shards(grown, tmp_path):
    root = tmp_path / "artifacts"
    copy_stage(grown.root, root, "dataset", grown.dataset1.key, grown.dataset2.key)
    copy_stage(grown.root, root, "encoder", grown.encoder.key)
    copy_stage(grown.root, root, "embeddings", grown.embeddings1.key, grown.result.manifest.key)
    folder = stage_dir(root, "embeddings", grown.result.manifest.key)
    (folder / MANIFEST).unlink()  # as if killed before finishing
    (folder / shard_name(2)).unlink()

    result = run_embeddings_stage(grown.settings.embeddings, grown.dataset2, grown.encoder, root)
    stats = result.manifest.stats
    assert result.status == "resumed"
    assert (stats["shards_reused"], stats["shards_computed"]) == (3, 1)
    assert stats["images_embedded"] + stats["images_reused"] == SHARD  # shard 2's rows only
    assert result.manifest.files == grown.result.manifest.files  # same bytes, sha256 by sha256


def test_an_earlier_stage_with_another_encoder_or_shard_size_is_not_reused(grown):
    other = grown.settings.encoder.model_copy(update={"seed": 1})
    encoder = run_encoder_stage(other, grown.dataset2, grown.root).manifest
    assert encoder.key != grown.encoder.key
    assert reuse_candidates(grown.settings.embeddings, encoder, grown.root) == []
    smaller = grown.settings.embeddings.model_copy(update={"shard_size": 5})
    assert reuse_candidates(smaller, grown.encoder, grown.root) == []

    stats = run_embeddings_stage(grown.settings.embeddings, grown.dataset2, encoder, grown.root).manifest.stats
    assert (stats["images_embedded"], stats["images_reused"], stats["reused_from"]) == (N + ADDED - 1, 0, [])


def test_a_tampered_earlier_shard_is_embedded_again(grown, scratch, tmp_path):
    root = tmp_path / "artifacts"
    copy_stage(grown.root, root, "dataset", grown.dataset1.key, grown.dataset2.key)
    copy_stage(grown.root, root, "encoder", grown.encoder.key)
    copy_stage(grown.root, root, "embeddings", grown.embeddings1.key)
    shard = stage_dir(root, "embeddings", grown.embeddings1.key) / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one float of the last vector: same size, another sha256
    shard.write_bytes(bytes(data))

    manifest = run_embeddings_stage(grown.settings.embeddings, grown.dataset2, grown.encoder, root).manifest
    stats = manifest.stats
    old_shas = open_snapshot(grown.root, grown.dataset1)["sha256"]
    in_tampered = len(set(old_shas[SHARD : 2 * SHARD]) & set(open_snapshot(grown.root, grown.dataset2)["sha256"]))
    assert in_tampered == SHARD
    assert (stats["images_embedded"], stats["images_reused"]) == (ADDED + in_tampered, N - 1 - in_tampered)
    (rejected,) = stats["reuse_rejected"]
    assert rejected["key"] == grown.embeddings1.key
    assert rejected["reason"].startswith(shard_name(1)) and "does not match its manifest" in rejected["reason"]
    vectors, _ = load_embeddings(root, manifest)
    fresh, _ = load_embeddings(*scratch)
    np.testing.assert_allclose(vectors, fresh, rtol=1e-4, atol=1e-5)


def test_an_earlier_stage_whose_dataset_is_gone_is_not_reused(grown, tmp_path):
    root = tmp_path / "artifacts"
    copy_stage(grown.root, root, "dataset", grown.dataset2.key)
    copy_stage(grown.root, root, "encoder", grown.encoder.key)
    copy_stage(grown.root, root, "embeddings", grown.embeddings1.key)
    stats = run_embeddings_stage(grown.settings.embeddings, grown.dataset2, grown.encoder, root).manifest.stats
    assert (stats["images_embedded"], stats["images_reused"]) == (N + ADDED - 1, 0)
    assert stats["reuse_rejected"] == [
        {"key": grown.embeddings1.key, "reason": f"its dataset snapshot {grown.dataset1.key} is gone"}
    ]


def test_the_summary_reports_images_embedded_and_reused(grown):
    from rich.console import Console

    from lookalike.artifacts.stage_runner import StageReport
    from lookalike.cli.render import print_summary
    from lookalike.reporting.summary import build_summary, summary_markdown
    from lookalike.stages.evaluation.stage import run_evaluation_stage
    from lookalike.stages.index.stage import run_index_stage

    s, root = grown.settings, grown.root
    index = run_index_stage(s.index, grown.result.manifest, root).manifest
    evaluation = run_evaluation_stage(s.evaluation, grown.dataset2, grown.result.manifest, index, root).manifest

    def summary(embeddings_status: str) -> dict:
        reports = {
            "dataset": StageReport(grown.dataset2, "computed", 1.0),
            "encoder": StageReport(grown.encoder, "cached", 0.1),
            "embeddings": StageReport(grown.result.manifest, embeddings_status, 1.0),
            "index": StageReport(index, "computed", 0.1),
            "evaluation": StageReport(evaluation, "computed", 0.1),
        }
        return build_summary(root, reports)

    computed = summary("computed")
    stage = computed["stages"]["embeddings"]
    assert (stage["images_embedded"], stage["images_reused"]) == (ADDED, N - 1)
    assert {"key", "status", "seconds", "reused"} <= set(stage)
    line = f"embeddings: {ADDED} images embedded, {N - 1} reused by content hash"
    assert line in summary_markdown(computed)
    console = Console(record=True, width=200)
    print_summary(console, computed)
    assert line in console.export_text()

    cached = summary("cached")  # a cached stage embedded and reused nothing in this run
    counts = cached["stages"]["embeddings"]
    assert (counts["images_embedded"], counts["images_reused"]) == (0, 0)
    assert "reused by content hash" not in summary_markdown(cached)
