"""The `retrieval-pipeline` flow under a real Prefect server, on tiny data."""

from pathlib import Path

import pytest
from helpers import TINY, default_encoder, flow_arguments
from wandb_offline import read_offline_run

from lookalike.core.graph import STAGE_NAMES

METHOD, _, DIM = default_encoder(TINY)

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_flow(root, **overrides):
    from lookalike.flows.retrieval import retrieval_pipeline

    return retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY, **overrides}))


def statuses(summary):
    return {name: s["status"] for name, s in summary["stages"].items()}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow") / "artifacts"
    return root, run_flow(root)


def test_first_run_computes_every_stage_and_reports_contract_keys(first):
    _, summary = first
    assert set(statuses(summary).values()) == {"computed"}
    assert list(summary["stages"]) == list(STAGE_NAMES)
    metrics = summary["metrics"]
    assert metrics["self_retrieval_at_1"] == 1.0
    assert 0 <= metrics["knn_accuracy"] <= 1 and 0 <= metrics["precision_at_10"] <= 1
    assert (metrics["n_images"], metrics["dim"]) == (48, DIM)
    assert metrics["evaluation_protocol"] == "held-out:test"
    assert (
        metrics["images"] == "28x28 px (median), grayscale, aligned"
    )  # the sample as stored; 16 px is the encoder input
    for name in ("encoder", "index", "wandb_run_dir"):
        assert summary["artifacts"][name]
    # every quality figure beside its baselines, on the same queries
    assert set(summary["baselines"]) == {"pixels", "init"}
    for name, scores in summary["baselines"].items():
        assert 0 <= scores["precision_at_10"] <= 1 and scores["what"]
        assert summary["gain"][name]["precision_at_10"] == pytest.approx(
            metrics["precision_at_10"] - scores["precision_at_10"], abs=1e-6
        )


def test_second_run_is_cached_everywhere_and_trains_nothing(first):
    root, summary = first
    again = run_flow(root)
    assert set(statuses(again).values()) == {"cached"}
    assert {n: s["key"] for n, s in again["stages"].items()} == {n: s["key"] for n, s in summary["stages"].items()}


def test_prefect_task_runs_show_the_cached_stages(first):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    root, _ = first
    from lookalike.flows.retrieval import retrieval_pipeline

    state = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}), return_state=True)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run.name])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=50,
        )
    by_name = {r.name: r.state.name for r in runs}
    for stage in STAGE_NAMES:
        assert by_name[stage] == "Cached", by_name


def test_the_prefect_ui_shows_the_listing_and_the_check_of_the_images_as_progress(first):
    """The key lists (and hashes) the collection in the flow run, before the dataset task starts: its bar
    and the task's own (checking images) are progress artifacts, with their counts and rates."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    said = [a.description or "" for a in artifacts]
    assert any(d.startswith("dataset: listing · ") and " files · " in d and "took" in d for d in said), said
    assert any(d.startswith("dataset: checking images · ") for d in said), said


def test_changing_only_the_index_type_recomputes_only_the_index(first):
    root, _ = first
    summary = run_flow(root, **{"index.type": "flat-ip"})
    assert statuses(summary) == {
        "dataset": "cached",
        "encoder": "cached",
        "embeddings": "cached",
        "index": "computed",
        "evaluation": "computed",
    }


def test_changing_epochs_recomputes_encoder_embeddings_and_index(first):
    root, _ = first
    summary = run_flow(root, **{"encoder.epochs": 2})
    assert statuses(summary) == {
        "dataset": "cached",
        "encoder": "computed",
        "embeddings": "computed",
        "index": "computed",
        "evaluation": "computed",
    }


def test_deleted_stage_folder_is_rebuilt_even_though_prefect_cached_it(first):
    import shutil

    root, summary = first
    shutil.rmtree(root / "index" / summary["stages"]["index"]["key"])
    again = run_flow(root)
    assert statuses(again)["index"] == "computed"
    assert statuses(again)["embeddings"] == "cached"


def test_torn_prefect_result_records_fall_back_to_the_stage_manifests(first):
    """Prefect writes its cache records in place (not atomically); a run killed mid-write leaves
    a torn record. Prefect then treats it as absent, and the stage finds its manifest."""
    from pathlib import Path

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    from lookalike.tasks.stage import cache_key

    root, summary = first
    names = {cache_key(stage, s["key"], root) for stage, s in summary["stages"].items()}
    records = [p for p in Path(PREFECT_LOCAL_STORAGE_PATH.value()).iterdir() if p.name in names]
    assert len(records) == 5
    for record in records:
        record.write_bytes(record.read_bytes()[:40])
    again = run_flow(root)
    assert set(statuses(again).values()) == {"cached"}
    assert again["metrics"] == summary["metrics"]


def test_wandb_offline_run_holds_the_faiss_embeddings_artifact(first):
    _, summary = first
    offline = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    assert offline["job_type"] == "upload-embeddings"
    (artifact,) = [a for a in offline["inputs"] if a["name"] == f"{METHOD}-embeddings"]
    assert artifact["type"] == "faiss-embeddings"
    assert {"latest", "production", summary["stages"]["index"]["key"]} <= set(artifact["aliases"])
    meta = artifact["metadata"]
    assert (meta["dim"], meta["ntotal"], meta["metric"], meta["index_type"]) == (DIM, 48, "l2", "flat-l2")
    assert meta["stage_keys"]["encoder"] == summary["stages"]["encoder"]["key"]
    assert meta["metrics"]["self_retrieval_at_1"] == 1.0
    assert set(artifact["files"]) == {"index.faiss", "metadata.parquet", "manifest.json"}
    assert any("pretrain/loss" in row for row in offline["history"])
    assert offline["summary"]["knn_accuracy"] == summary["metrics"]["knn_accuracy"]


def offline_runs_of(root, group):
    """Every offline W&B run folder of one flow run (they share its name as their group)."""
    runs = [read_offline_run(folder) for folder in sorted((root / "wandb").glob("offline-run-*"))]
    return {run["job_type"]: run for run in runs if run["group"] == group}


def test_wandb_lineage_chain_dataset_model_embeddings_index(first):
    """Each stage's artifact is logged by the run that made it and declared as input by the run
    that consumed it, with the same content digest (one version once synced)."""
    from lookalike.artifacts.shared_root import read_manifest

    root, summary = first
    main = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    runs = offline_runs_of(root, main["group"])
    assert set(runs) == {"dataset", "pretrain", "embed", "build-index", "upload-embeddings"}
    stage_runs = summary["artifacts"]["wandb_stage_runs"]  # what the summary tells `wandb sync`
    assert {read_offline_run(d)["job_type"] for d in stage_runs.values()} == set(runs) - {"upload-embeddings"}
    made = {}
    for job, stage, kind, name in [
        ("dataset", "dataset", "dataset", "sample-train"),
        ("pretrain", "encoder", "model", f"{METHOD}-encoder"),
        ("embed", "embeddings", "embeddings", f"{METHOD}-vectors"),
        ("build-index", "index", "faiss-embeddings", f"{METHOD}-embeddings"),
    ]:
        key = summary["stages"][stage]["key"]
        (logged,) = [a for a in runs[job]["artifacts"] if a["type"] == kind]
        assert logged["name"] == name and {"latest", key} <= set(logged["aliases"])
        manifest = read_manifest(root, stage, key)
        assert logged["metadata"]["stage_key"] == key
        assert logged["metadata"]["sha256"] == {f.path: f.sha256 for f in manifest.files}
        made[kind] = logged

    def inputs(job):
        return {a["type"]: a["digest"] for a in runs[job]["inputs"]}

    digest = {kind: a["digest"] for kind, a in made.items()}
    assert inputs("dataset") == {}
    assert inputs("pretrain") == {"dataset": digest["dataset"]}
    assert inputs("embed") == {"model": digest["model"], "dataset": digest["dataset"]}
    assert inputs("build-index") == {"embeddings": digest["embeddings"]}
    assert inputs("upload-embeddings") == {"faiss-embeddings": digest["faiss-embeddings"], "model": digest["model"]}
    # the dataset is a reference: its manifest (content fingerprint) only, not the snapshot
    assert set(made["dataset"]["files"]) == {"manifest.json"}
    dataset = read_manifest(root, "dataset", summary["stages"]["dataset"]["key"])
    assert made["dataset"]["metadata"]["settings"]["content"] == dataset.settings["content"]
    assert set(made["model"]["files"]) == {"encoder.pt", "loss.png", "manifest.json"}
    assert made["model"]["metadata"]["input_artifacts"] == {"dataset": f"sample-train:{dataset.key}"}
    assert [row["pretrain/loss"] for row in runs["pretrain"]["history"]] == read_manifest(
        root, "encoder", summary["stages"]["encoder"]["key"]
    ).stats["losses"]


def test_a_cached_rerun_logs_no_stage_runs_and_declares_the_same_index(first):
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.flows.retrieval import retrieval_pipeline

    root, _ = first
    again = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}))
    assert set(statuses(again).values()) == {"cached"} and not again["artifacts"]["wandb_stage_runs"]
    main = read_offline_run(again["artifacts"]["wandb_run_dir"])
    assert set(offline_runs_of(root, main["group"])) == {"upload-embeddings"}
    (used,) = [a for a in main["inputs"] if a["type"] == "faiss-embeddings"]
    key = again["stages"]["index"]["key"]
    assert key in used["aliases"]
    assert used["metadata"]["sha256"] == {f.path: f.sha256 for f in read_manifest(root, "index", key).files}


def test_wandb_offline_run_holds_the_retrieval_table_with_thumbnails(first):
    """A table with images is stored as a `run_table` artifact (its JSON plus the images);
    the run's history points at it."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.stages.dataset.images import decode_rgb
    from lookalike.stages.dataset.stage import open_snapshot, row_positions

    root, summary = first
    offline = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    (logged,) = [row for row in offline["history"] if "retrieval/path" in row]
    assert (logged["retrieval/_type"], logged["retrieval/nrows"], logged["retrieval/ncols"]) == ("table-file", 2, 15)
    (artifact,) = [a for a in offline["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-retrieval")]
    table = json.loads(Path(artifact["files"]["retrieval.table.json"]["local_path"]).read_text())
    assert table["columns"] == ["query", "query_row", "query_label"] + [
        f"{name}_{i}" for i in (1, 2, 3) for name in ("neighbour", "row", "label", "distance")
    ]
    evaluation = root / "evaluation" / summary["stages"]["evaluation"]["key"]
    recorded = json.loads((evaluation / "neighbours.json").read_text())
    inputs = read_manifest(root, "evaluation", summary["stages"]["evaluation"]["key"]).inputs
    queries = open_snapshot(root, read_manifest(root, "dataset", inputs["queries"]))
    assert recorded["protocol"] == "held-out:test" and len(table["data"]) == len(recorded["rows"]) == 2
    for cells, row in zip(table["data"], recorded["rows"]):
        assert cells[1:3] == [row["row_id"], row["label"]]
        assert cells[4::4] == [n["row_id"] for n in row["neighbours"]]
        assert cells[5::4] == [n["label"] for n in row["neighbours"]]
        assert cells[6::4] == pytest.approx([n["distance"] for n in row["neighbours"]])
        for image in [cells[0], *cells[3::4]]:  # the query's and each neighbour's thumbnail
            assert image["_type"] == "image-file" and (image["width"], image["height"]) == (28, 28)
            assert Path(artifact["files"][image["path"]]["local_path"]).stat().st_size > 0
        # the query thumbnail is the held-out image (row ids are numbered per split, so not the indexed one)
        thumbnail = Image.open(artifact["files"][cells[0]["path"]]["local_path"]).convert("RGB")
        held_out = decode_rgb(queries[row_positions(queries)[row["row_id"]]]["image"]["bytes"], 1 << 30)
        assert np.array_equal(np.asarray(thumbnail), np.asarray(held_out))


def test_the_map_is_in_the_evaluation_folder_and_the_wandb_run_with_one_row_per_point(first):
    """map.png beside the evaluation's other files (sha256 in its manifest), logged as a picture, and
    the mapped points as the `map_points` table W&B's projector plots; leaks and clean scores reported."""
    import hashlib
    import json

    from lookalike.artifacts.shared_root import read_manifest

    root, summary = first
    manifest = read_manifest(root, "evaluation", summary["stages"]["evaluation"]["key"])
    picture = Path(summary["artifacts"]["map"])
    assert hashlib.sha256(picture.read_bytes()).hexdigest() == manifest.file("map.png").sha256
    points = json.loads(Path(summary["artifacts"]["map_points"]).read_text())
    assert len(points["rows"]) == manifest.stats["map"]["n_points"] == 48  # every indexed image (TINY: 48)
    offline = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    assert any(row.get("map/_type") == "image-file" for row in offline["history"])
    (artifact,) = [a for a in offline["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-map_points")]
    table = json.loads(Path(artifact["files"]["map_points.table.json"]["local_path"]).read_text())
    assert table["columns"][:5] == ["row", "label", "image", "x", "y"]
    assert [row[0] for row in table["data"]] == points["rows"]
    assert [row[3] for row in table["data"]] == pytest.approx(points["x"])
    # every held-out query is either leaked or clean; the summary carries both sets of scores
    leaks = summary["leaks"]
    assert leaks["exact"] + leaks["near"] == leaks["n_leaked"] == 64 - summary["clean"]["n_queries"]
    assert set(summary["clean"]) >= {"knn_accuracy", "precision_at_10", "map_at_10", "n_queries", "gain"}


def test_unreachable_mirror_fails_the_mirror_not_the_local_result(tmp_path):
    summary = run_flow(
        tmp_path / "artifacts",
        **{"mirror.url": "s3://b/p", "mirror.endpoint_url": "http://127.0.0.1:9", "mirror.retries": 0},
    )
    assert "failed" in summary["artifacts"]["mirror"]
    assert summary["metrics"]["self_retrieval_at_1"] == 1.0


def wandb_load(root, tmp_path, ref=f"team/lookalike/{METHOD}-embeddings:production", api=None):
    from wandb_fake import FakeApi

    from lookalike.reporting.wandb_chain import fetch_wandb_chain

    api = api or FakeApi("team", "lookalike", root / "wandb")
    return fetch_wandb_chain(ref, tmp_path / "cache", api=api), api


def test_an_index_loads_by_wandb_artifact_path_into_an_empty_cache_and_answers_queries(first, tmp_path):
    """W&B artifact path in --index: the chain follows the logged lineage, every file verified.
    W&B's production is lookalike's: whichever of this module's runs the promotion gate last let
    through (a later TINY run in the same root may beat the first)."""
    import numpy as np

    from lookalike.artifacts.aliases import read_alias
    from lookalike.serving.query import Searcher
    from lookalike.serving.refs import index_chain, resolve_name

    root, _ = first
    (cache_root, key), api = wandb_load(root, tmp_path)
    production = read_alias(root, "production").stages
    assert key == production["index"]
    keys = {s: production[s] for s in ("embeddings", "encoder", "dataset")}
    assert api.requests == [
        f"team/lookalike/{METHOD}-embeddings:production",
        f"team/lookalike/{METHOD}-vectors:{keys['embeddings']}",
        f"team/lookalike/{METHOD}-encoder:{keys['encoder']}",
        f"team/lookalike/sample-train:{keys['dataset']}",
    ]
    remote = Searcher(cache_root, resolve_name(cache_root, key)[0])
    local = Searcher(root, index_chain(root, key))
    image = local.image_of_row(int(local.snapshot[3]["row_id"]))
    assert remote.neighbours(image, 3) == local.neighbours(image, 3)
    assert np.array_equal(remote.embed(image), local.embed(image))
    # a second load finds the verified cache and downloads nothing but the artifacts' metadata
    (again, _), api2 = wandb_load(root, tmp_path)
    assert again == cache_root and len(api2.requests) == 4


def test_a_tampered_wandb_file_is_refused_and_not_kept(first, tmp_path):
    from wandb_fake import FakeApi

    from lookalike.core.manifest import IntegrityError

    root, summary = first
    api = FakeApi("team", "lookalike", root / "wandb")
    record = api.versions[f"{METHOD}-encoder:production"]
    bad = tmp_path / "encoder.pt"
    data = bytearray(Path(record["files"]["encoder.pt"]["local_path"]).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    bad.write_bytes(bytes(data))
    for version in api.versions.values():
        if version is record or version["digest"] == record["digest"]:
            version["files"]["encoder.pt"] = {**version["files"]["encoder.pt"], "local_path": str(bad)}
    with pytest.raises(
        IntegrityError, match=rf"W&B artifact team/lookalike/{METHOD}-encoder:\w+: encoder.pt does not match"
    ):
        wandb_load(root, tmp_path, api=api)
    assert not list((tmp_path / "cache").rglob("encoder.pt"))


def test_a_wandb_dataset_whose_source_changed_is_refused(first, tmp_path):
    """The dataset artifact is a reference; a source that no longer has that content is refused."""
    import json

    from wandb_fake import FakeApi

    from lookalike.core.manifest import IntegrityError

    root, summary = first
    api = FakeApi("team", "lookalike", root / "wandb")
    key = summary["stages"]["dataset"]["key"]
    record = api.versions[f"sample-train:{key}"]
    changed = json.loads(Path(record["files"]["manifest.json"]["local_path"]).read_text())
    changed["settings"]["limit"] = 47  # what the source gives here no longer matches the recorded key
    (tmp_path / "manifest.json").write_text(json.dumps(changed))
    record["files"]["manifest.json"] = {
        **record["files"]["manifest.json"],
        "local_path": str(tmp_path / "manifest.json"),
    }
    with pytest.raises(IntegrityError, match="the images changed or are not on this machine"):
        wandb_load(root, tmp_path, api=api)


@pytest.mark.parametrize(
    "ref, error",
    [
        (f"team/lookalike/{METHOD}-embeddings:v9", f"cannot read W&B artifact team/lookalike/{METHOD}-embeddings:v9"),
        (f"team/lookalike/{METHOD}-vectors:latest", "type faiss-embeddings"),
    ],
)
def test_a_wandb_path_that_names_no_index_is_one_clear_error(first, tmp_path, ref, error):
    from lookalike.reporting.tracking import WandbLoadError

    root, _ = first
    with pytest.raises(WandbLoadError, match=error):
        wandb_load(root, tmp_path, ref=ref)


def test_a_wandb_path_without_credentials_says_it_needs_wandb_online(tmp_path, monkeypatch):
    from lookalike.reporting.tracking import WandbLoadError
    from lookalike.serving.refs import IndexRef

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(WandbLoadError, match="needs W&B online with an API key"):
        IndexRef.parse(f"team/lookalike/{METHOD}-embeddings:production").localize(tmp_path)


def test_a_wandb_failure_is_reported_and_never_fails_the_run(first, monkeypatch):
    from lookalike.flows.retrieval import retrieval_pipeline
    from lookalike.reporting.tracking import TrackingRun

    root, summary = first

    def refuse(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(TrackingRun, "use_artifact", refuse)
    again = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}))
    assert "api.wandb.ai unreachable" in again["artifacts"]["wandb_error"]
    assert again["metrics"] == summary["metrics"] and "latest" in again["aliases"]


def test_a_real_run_computes_the_stage_keys_recorded_for_its_settings(first):
    """tests/core/test_graph.py checks planned keys against recorded ones; this checks that a run
    really writes the folders those keys name."""
    import json

    recorded = json.loads((Path(__file__).parents[1] / "core" / "data" / "stage_keys.json").read_text())["tiny"]
    _, summary = first
    assert {stage: s["key"] for stage, s in summary["stages"].items()} == {
        stage: key for stage, key in recorded.items() if stage != "queries"
    }
