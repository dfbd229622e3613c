"""encoder → embeddings → index → evaluation on tiny data, through the lib stage runners."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY, default_encoder

from lookalike.core.manifest import MANIFEST, IntegrityError, stage_dir
from lookalike.stages.dataset.stage import open_snapshot, run_dataset_stage
from lookalike.stages.embeddings.shards import load_embeddings, shard_name
from lookalike.stages.embeddings.stage import run_embeddings_stage
from lookalike.stages.encoder.checkpoint import EncoderLoadError, load_encoder, load_encoder_file
from lookalike.stages.encoder.stage import run_encoder_stage
from lookalike.stages.encoder.training import TRAIN_STATE
from lookalike.stages.evaluation.metrics import held_out_metrics, label_metrics
from lookalike.stages.evaluation.stage import choose_query_split, run_evaluation_stage
from lookalike.stages.index.factory import PRESETS, IndexBuildError, load_index, search
from lookalike.stages.index.stage import run_index_stage
from lookalike.stages.inference import Embedder


@pytest.fixture(scope="module")
def template(tiny_chain):
    """The session's TINY dataset → encoder → embeddings; each test copies the stages it asks for."""
    return tiny_chain


def _copied(template, root, stage: str) -> None:
    shutil.copytree(template / stage, root / stage, ignore=shutil.ignore_patterns(".*.lock"))


@pytest.fixture
def dataset(tiny, root, template):
    _copied(template, root, "dataset")
    found = run_dataset_stage(tiny.dataset, root)
    assert found.status == "cached"
    return found.manifest


@pytest.fixture
def encoder(tiny, dataset, root, template):
    _copied(template, root, "encoder")
    return run_encoder_stage(tiny.encoder, dataset, root).manifest


@pytest.fixture
def embeddings(tiny, dataset, encoder, root, template):
    _copied(template, root, "embeddings")
    return run_embeddings_stage(tiny.embeddings, dataset, encoder, root).manifest


@pytest.mark.parametrize(
    "method, augmentation",
    [
        ("dino", "per-image"),
        ("simclr", "per-image"),
        ("byol", "per-image"),
        ("dino", "batched"),
        ("byol", "batched"),
    ],
)
def test_each_method_trains_and_exports_a_self_describing_encoder(tiny, dataset, root, method, augmentation):
    section = tiny.encoder.model_copy(update={"method": method, "augmentation": augmentation})
    result = run_encoder_stage(section, dataset, root)
    assert result.status == "computed"
    assert len(result.manifest.stats["losses"]) == 1 and np.isfinite(result.manifest.stats["losses"][0])
    model, spec = load_encoder(root, result.manifest)
    _, backbone, dim = default_encoder(TINY)
    assert (spec.method, spec.architecture, spec.input_size, spec.feature_dim) == (method, backbone, 16, dim)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, dim)
    assert not (stage_dir(root, "encoder", result.manifest.key) / TRAIN_STATE).exists()


@pytest.mark.parametrize("pooling, cells", [("grid", 2), ("avg", 1)])
def test_the_method_head_learns_from_the_vectors_the_index_will_hold(tiny, dataset, root, pooling, cells):
    """A grid read-out is what training's projection head reads, not only what is exported."""
    from lookalike.stages.encoder.stage import resolve
    from lookalike.stages.encoder.training import build_training_method, encoder_spec

    section, _, plan = resolve(tiny.encoder.model_copy(update={"pooling": pooling}), dataset)
    assert (section.input_size, section.pooling) == (16, pooling)  # a 2x2 last map: auto grid_cells is 2
    method, dim = build_training_method(section, plan, root)
    head = next(m for m in method.projection_head.modules() if isinstance(m, torch.nn.Linear))
    avg_dim = build_training_method(section.model_copy(update={"pooling": "avg"}), plan, root)[1]
    assert head.in_features == dim == encoder_spec(section, dim).feature_dim == avg_dim * cells**2


def test_an_encoder_of_zero_steps_decodes_no_image(tiny, dataset, root):
    from lookalike.core.progress import listen_to_progress

    bars: list[str] = []
    with listen_to_progress(lambda report: bars.append(report.desc)):
        run_encoder_stage(tiny.encoder.model_copy(update={"epochs": 0}), dataset, root)
    assert bars and not [desc for desc in bars if "decoding" in desc]


def test_per_image_crops_decode_a_jpeg_large_enough_for_their_smallest_crop():
    from lookalike.core.settings import EncoderSettings
    from lookalike.stages.encoder.training import per_image_draft

    assert per_image_draft(EncoderSettings(input_size=32, crop_min_scale=0.25)) == 64  # a half-side crop: 32 px
    assert per_image_draft(EncoderSettings(input_size=32, crop_min_scale=0.08)) == 114  # 32 / sqrt(0.08)
    assert per_image_draft(EncoderSettings(input_size=32, crop_min_scale=None)) is None  # the method's: full size


def test_interrupted_pretraining_resumes_from_its_last_epoch(tiny, dataset, root):
    section = tiny.encoder.model_copy(update={"epochs": 2})
    epochs_seen = []

    def die_after_first_epoch(epoch, epochs, loss, seconds):
        epochs_seen.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt("preempted")

    with pytest.raises(KeyboardInterrupt):
        run_encoder_stage(section, dataset, root, on_epoch=die_after_first_epoch)
    result = run_encoder_stage(section, dataset, root, on_epoch=lambda *a: epochs_seen.append(a[0]))
    assert epochs_seen == [1, 2]  # epoch 1 was not trained again
    assert result.status == "resumed"
    assert result.manifest.stats["resumed_from_epoch"] == 1
    assert len(result.manifest.stats["losses"]) == 2


def test_a_full_disk_at_a_training_checkpoint_is_one_line_and_the_rerun_resumes(tiny, dataset, root):
    """torch.save to a path raised "RuntimeError: ... unexpected pos" on a full disk: a crash with
    tracebacks instead of the one line a full disk gets everywhere else."""
    import os

    from lookalike.artifacts.stage_runner import ArtifactStorageError
    from lookalike.stages.encoder.stage import encoder_key

    section = tiny.encoder.model_copy(update={"epochs": 2})
    folder = stage_dir(root, "encoder", encoder_key(section, dataset, root))
    # the disk fills after epoch 1's checkpoint: the writer's temp file for epoch 2 is /dev/full,
    # which fails every write with ENOSPC
    full = folder / f".{TRAIN_STATE}.{os.getpid()}.tmp"

    def disk_fills(epoch, *_):
        if epoch == 1:
            full.symlink_to("/dev/full")

    with pytest.raises(ArtifactStorageError) as caught:
        run_encoder_stage(section, dataset, root, on_epoch=disk_fills)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot write the encoder stage under {root}")
    assert "No space left on device" in message and "free disk space" in message
    assert not full.is_symlink() and not list(folder.glob(".*.tmp"))  # no temp file left behind
    result = run_encoder_stage(section, dataset, root)  # space freed (the fault is gone)
    assert result.status == "resumed" and result.manifest.stats["resumed_from_epoch"] == 1


@pytest.mark.parametrize("augmentation, lr_schedule", [("per-image", "constant"), ("batched", "cosine")])
def test_resumed_pretraining_matches_an_uninterrupted_run(tiny, dataset, root, augmentation, lr_schedule):
    """The resumed epoch continues the same augmentation stream and, under cosine, the same lr step."""
    section = tiny.encoder.model_copy(update={"epochs": 2, "augmentation": augmentation, "lr_schedule": lr_schedule})
    other_root = root.parent / "other"
    shutil.copytree(root, other_root)  # same dataset snapshot in a second root
    straight = run_encoder_stage(section, dataset, other_root).manifest

    def die(epoch, *_):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_encoder_stage(section, dataset, root, on_epoch=die)
    resumed = run_encoder_stage(section, dataset, root).manifest
    assert resumed.stats["resumed_from_epoch"] == 1
    assert resumed.file("encoder.pt").sha256 == straight.file("encoder.pt").sha256  # bit-identical


def test_embeddings_are_sharded_in_row_order(tiny, embeddings, root):
    vectors, row_ids = load_embeddings(root, embeddings)
    assert vectors.shape == (48, default_encoder(TINY)[2]) and vectors.dtype == np.float32
    assert embeddings.stats["n_shards"] == 3
    assert list(row_ids) == sorted(row_ids)


def test_retry_reembeds_only_missing_shards(tiny, dataset, encoder, embeddings, root):
    before, _ = load_embeddings(root, embeddings)
    folder = stage_dir(root, "embeddings", embeddings.key)
    (folder / MANIFEST).unlink()  # as if killed before finishing
    (folder / shard_name(2)).unlink()
    result = run_embeddings_stage(tiny.embeddings, dataset, encoder, root)
    assert result.status == "resumed"
    assert (result.manifest.stats["shards_reused"], result.manifest.stats["shards_computed"]) == (2, 1)
    after, _ = load_embeddings(root, result.manifest)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_embedding_batch_size_does_not_change_the_key(tiny, dataset, encoder, embeddings, root):
    other = tiny.embeddings.model_copy(update={"batch_size": 5})
    assert run_embeddings_stage(other, dataset, encoder, root).status == "cached"


TRAINED = {
    "ivf-flat",
    "ivf-sq8",
    "ivf-pq",
    "ivf-pqfs-rflat",
}  # need more than the 48 tiny vectors: see test_index_presets.py


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - TRAINED))
def test_each_preset_round_trips_and_returns_row_ids(tiny, embeddings, root, preset):
    section = tiny.index.model_copy(update={"type": preset})
    manifest = run_index_stage(section, embeddings, root).manifest
    index = load_index(root, manifest)
    vectors, row_ids = load_embeddings(root, embeddings)
    _, found = search(
        index,
        vectors[:5]
        if manifest.stats["metric"] == "l2"
        else vectors[:5] / np.linalg.norm(vectors[:5], axis=1, keepdims=True),
        3,
    )
    assert set(found.ravel()) <= set(row_ids.tolist())
    assert manifest.stats["ntotal"] == 48
    expected = 1.0 if manifest.stats["exact"] else 0.9
    assert manifest.stats["self_retrieval_at_1"] >= expected


def test_auto_records_its_choice_and_why_in_the_manifest(tiny, embeddings, root):
    section = tiny.index.model_copy(update={"type": "auto"})
    stats = run_index_stage(section, embeddings, root).manifest.stats
    assert stats["type"] == "auto" and stats["chosen"] == stats["auto"]["chosen"] == "flat-l2"
    assert stats["auto"]["target_met"] and "held-out" in stats["auto"]["reason"]
    verdicts = {r["preset"]: r["verdict"] for r in stats["auto"]["candidates"]}
    assert verdicts["ivf-pq"].startswith("not buildable: ivf-pq needs at least")  # 48 vectors train no lists
    assert stats["self_retrieval_at_1"] == 1.0 and stats["ntotal"] == 48


def test_raw_factory_string_with_ip_prefix(tiny, embeddings, root):
    manifest = run_index_stage(tiny.index.model_copy(update={"type": "ip:Flat"}), embeddings, root).manifest
    assert manifest.stats["metric"] == "ip" and manifest.stats["self_retrieval_at_1"] == 1.0


def test_index_needing_more_vectors_than_exist_fails_clearly(tiny, embeddings, root):
    with pytest.raises(IndexBuildError, match=r"cannot be trained on 48 vectors.*index more images"):
        run_index_stage(tiny.index.model_copy(update={"type": "IVF64,Flat"}), embeddings, root)


@pytest.mark.parametrize("preset", sorted(TRAINED))
def test_ivf_preset_on_too_few_vectors_says_how_many_it_needs(tiny, embeddings, root, preset):
    with pytest.raises(IndexBuildError, match=rf"{preset} needs at least \d+ vectors.*got 48; use flat-l2"):
        run_index_stage(tiny.index.model_copy(update={"type": preset}), embeddings, root)


def test_tampered_index_is_refused_before_reading(tiny, embeddings, root):
    manifest = run_index_stage(tiny.index, embeddings, root).manifest
    path = stage_dir(root, "index", manifest.key) / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        load_index(root, manifest)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    import argparse

    # any pickled Python object (here a Namespace) could run code on load
    torch.save({"spec": {"architecture": "resnet18"}, "state_dict": {}, "payload": argparse.Namespace(x=1)}, path)
    with pytest.raises(EncoderLoadError, match="not a weights-only"):
        load_encoder_file(path)


def test_an_encoder_manifest_whose_settings_do_not_load_names_the_folder_to_delete(encoder, root):
    """A manifest an older version wrote with "lr": null (from encoder.lr=inf) failed every later run
    as a crash that said to run the same command again."""
    from lookalike.core.manifest import find_manifest
    from lookalike.stages.encoder.training import starting_point

    path = stage_dir(root, "encoder", encoder.key) / MANIFEST
    data = json.loads(path.read_text())
    data["settings"]["lr"] = None
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError) as caught:
        starting_point(find_manifest(root, "encoder", encoder.key), root)
    message = str(caught.value)
    assert "\n" not in message and "encoder settings" in message and "lr" in message
    assert f"delete {path.parent} and re-run" in message


def test_evaluation_reports_knn_and_precision_and_draws_a_grid(tiny, dataset, embeddings, root):
    index = run_index_stage(tiny.index, embeddings, root).manifest
    result = run_evaluation_stage(tiny.evaluation, dataset, embeddings, index, root)
    stats = result.manifest.stats
    assert 0.0 <= stats["knn_accuracy"] <= 1.0 and 0.0 <= stats["precision_at_10"] <= 1.0
    assert (stage_dir(root, "evaluation", result.manifest.key) / "retrieval-grid.png").stat().st_size > 1000


def test_label_metrics_leave_the_query_out_and_break_ties_by_rank():
    labels = np.array([0, 0, 1, 1])
    position = {10: 0, 11: 1, 12: 2, 13: 3}
    # query 10 finds itself, then 12 (label 1) and 11 (label 0): a 1-1 tie -> nearest wins (1)
    ids = np.array([[10, 12, 11], [11, 10, 13]])
    out = label_metrics(ids, np.array([10, 11]), labels, position, k=2, names=["a", "b"])
    assert out["knn_accuracy"] == 0.5
    assert out["precision_at_2"] == 0.5
    # query 10: ranks [12 (miss), 11 (hit)] -> AP = (1/2) / min(2, R=1) = 0.5; query 11: [10 hit] -> 1.0
    assert out["map_at_2"] == 0.75
    assert out["per_class"] == {"a": 0.5}


def test_held_out_metrics_keep_every_neighbour_and_count_all_indexed_images_as_relevant():
    label_of = {10: "a", 11: "a", 12: "b", 13: "b"}
    # query row ids are numbered per split: a held-out query with row id 10 is not indexed row 10
    ids = np.array([[10, 12, 11], [12, 10, 13]])
    out = held_out_metrics(ids, ["a", "b"], label_of, k=2)
    assert out["knn_accuracy"] == 1.0  # [a, b] and [b, a]: 1-1 ties, the nearest wins
    assert out["precision_at_2"] == 0.5
    assert out["map_at_2"] == 0.5  # one hit at rank 1 of min(k, R=2) -> 0.5, twice
    assert out["per_class"] == {"a": 1.0, "b": 1.0}
    assert held_out_metrics(ids, [None, "c"], label_of, k=2)["knn_accuracy"] == 0.0  # unlabelled skipped


def test_query_images_are_embedded_exactly_as_the_embeddings_stage_did(tiny, dataset, encoder, embeddings, root):
    stored, _ = load_embeddings(root, embeddings)
    fresh = Embedder(root, encoder).embed_snapshot(open_snapshot(root, dataset), batch_size=tiny.embeddings.batch_size)
    np.testing.assert_allclose(fresh, stored, rtol=1e-5, atol=1e-5)


def _brute_force_knn_accuracy(queries, labels_q, vectors, labels, k):
    distances = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    correct = []
    for row, truth in zip(distances, labels_q):
        nearest = [labels[i] for i in np.argsort(row, kind="stable")[:k]]
        votes = {lab: nearest.count(lab) for lab in nearest}
        correct.append(next(lab for lab in nearest if votes[lab] == max(votes.values())) == truth)
    return float(np.mean(correct))


def test_held_out_evaluation_scores_the_test_split_against_the_index(tiny, dataset, encoder, embeddings, root):
    queries_section = choose_query_split(
        tiny.dataset, tiny.evaluation.model_copy(update={"max_queries": 24}), ["train", "test"]
    )
    queries = run_dataset_stage(queries_section, root).manifest
    index = run_index_stage(tiny.index, embeddings, root).manifest
    result = run_evaluation_stage(tiny.evaluation, dataset, embeddings, index, root, queries)
    manifest, stats = result.manifest, result.manifest.stats
    assert (stats["protocol"], stats["n_queries"], stats["query_dataset"]) == ("held-out:test", 24, queries.key)
    assert manifest.inputs == {"dataset": dataset.key, "index": index.key, "queries": queries.key}
    assert manifest.key != run_evaluation_stage(tiny.evaluation, dataset, embeddings, index, root).manifest.key

    # the same number from first principles: exact L2 over the stored vectors, labels by name
    query_snapshot, indexed = open_snapshot(root, queries), open_snapshot(root, dataset)
    names = dataset.stats["label_names"]
    vectors, _ = load_embeddings(root, embeddings)
    query_vectors = Embedder(root, encoder).embed_snapshot(query_snapshot)
    expected = _brute_force_knn_accuracy(
        query_vectors,
        [names[v] for v in query_snapshot["label"]],
        vectors,
        [names[v] for v in indexed["label"]],
        tiny.evaluation.k,
    )
    assert stats["knn_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert 0 <= stats["precision_at_10"] <= 1 and 0 <= stats["map_at_10"] <= 1
    assert set(stats["per_class"]) <= set(names)

    folder = stage_dir(root, "evaluation", manifest.key)
    record = json.loads((folder / "neighbours.json").read_text())
    assert record["protocol"] == "held-out:test" and record["queries_from"] == "queries"
    assert len(record["rows"]) == tiny.evaluation.grid_queries
    query_rows, indexed_rows = set(query_snapshot["row_id"]), set(indexed["row_id"])
    for row in record["rows"]:
        assert row["row_id"] in query_rows and row["label"] in names
        assert len(row["neighbours"]) == tiny.evaluation.grid_neighbours
        assert {n["row_id"] for n in row["neighbours"]} <= indexed_rows
        assert [n["distance"] for n in row["neighbours"]] == sorted(n["distance"] for n in row["neighbours"])
    # evaluation.duplicates (default on): the duplicate groups of the indexed images, their picture when any
    found = json.loads((folder / "duplicates.json").read_text())
    assert stats["duplicates"] == {
        k: found[k] for k in ("threshold", "threshold_why", "metric", "n_groups", "n_exact_groups", "n_near_groups")
    } | {"n_images_in_groups": found["n_images_in_groups"], "n_images": len(indexed)}
    picture = {"duplicates.png"} if found["n_groups"] else set()
    maps = {"map.json", "map.png"}  # the collection's embeddings in 2-D (tests/stages/test_leaks.py)
    assert {f.path for f in manifest.files} == {
        "neighbours.json",
        "retrieval-grid.png",
        "duplicates.json",
    } | picture | maps


def test_leave_one_out_grid_leaves_the_query_out(tiny, dataset, embeddings, root):
    index = run_index_stage(tiny.index, embeddings, root).manifest
    result = run_evaluation_stage(tiny.evaluation, dataset, embeddings, index, root)
    assert (result.manifest.stats["protocol"], result.manifest.stats["query_dataset"]) == ("leave-one-out", None)
    record = json.loads((stage_dir(root, "evaluation", result.manifest.key) / "neighbours.json").read_text())
    assert record["queries_from"] == "dataset"
    for row in record["rows"]:
        assert row["row_id"] not in [n["row_id"] for n in row["neighbours"]]
        assert len(row["neighbours"]) == tiny.evaluation.grid_neighbours


def test_evaluation_duplicates_off_writes_no_groups(tiny, dataset, embeddings, root):
    index = run_index_stage(tiny.index, embeddings, root).manifest
    section = tiny.evaluation.model_copy(update={"duplicates": False})
    manifest = run_evaluation_stage(section, dataset, embeddings, index, root).manifest
    assert "duplicates" not in manifest.stats
    assert {f.path for f in manifest.files} == {"neighbours.json", "retrieval-grid.png", "map.json", "map.png"}


def test_unlabelled_held_out_queries_give_no_scores_but_a_grid(tiny, dataset, embeddings, root):
    section = tiny.dataset.model_copy(update={"split": "test", "limit": 8, "label_column": None})
    queries = run_dataset_stage(section, root).manifest
    index = run_index_stage(tiny.index, embeddings, root).manifest
    result = run_evaluation_stage(tiny.evaluation, dataset, embeddings, index, root, queries)
    stats = result.manifest.stats
    assert stats["protocol"] == "held-out:test" and stats["n_queries"] == 8
    assert stats["knn_accuracy"] is None and stats["per_class"] is None
    assert (stage_dir(root, "evaluation", result.manifest.key) / "retrieval-grid.png").stat().st_size > 1000
