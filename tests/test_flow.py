"""The `retrieval-pipeline` flow under a real Prefect server, on tiny data."""

import pytest

from conftest import TINY, flow_arguments
from lib.storage import s3_client
from lib.tracking import read_offline_run

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_flow(root, **overrides):
    from flows.retrieval import retrieval_pipeline

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
    assert list(summary["stages"]) == ["dataset", "encoder", "embeddings", "index", "evaluation"]
    metrics = summary["metrics"]
    assert metrics["self_retrieval_at_1"] == 1.0
    assert 0 <= metrics["knn_accuracy"] <= 1 and 0 <= metrics["precision_at_10"] <= 1
    assert (metrics["n_images"], metrics["dim"]) == (48, 512)
    assert metrics["evaluation_protocol"] == "held-out:test"
    for name in ("encoder", "index", "wandb_run_dir"):
        assert summary["artifacts"][name]


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
    from flows.retrieval import retrieval_pipeline

    state = retrieval_pipeline(**flow_arguments({"artifacts_root": str(root), **TINY}), return_state=True)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[flow_run.name])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=50,
        )
    by_name = {r.name: r.state.name for r in runs}
    for stage in ("dataset", "encoder", "embeddings", "index", "evaluation"):
        assert by_name[stage] == "Cached", by_name


def test_changing_only_the_index_type_recomputes_only_the_index(first):
    root, _ = first
    summary = run_flow(root, **{"index.type": "flat-ip"})
    assert statuses(summary) == {"dataset": "cached", "encoder": "cached", "embeddings": "cached",
                                 "index": "computed", "evaluation": "computed"}


def test_changing_epochs_recomputes_encoder_embeddings_and_index(first):
    root, _ = first
    summary = run_flow(root, **{"encoder.epochs": 2})
    assert statuses(summary) == {"dataset": "cached", "encoder": "computed", "embeddings": "computed",
                                 "index": "computed", "evaluation": "computed"}


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

    from tasks.stage import cache_key

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
    (artifact,) = [a for a in offline["artifacts"] if a["name"] == "dino-embeddings"]
    assert artifact["type"] == "faiss-embeddings"
    assert "latest" in artifact["aliases"] and summary["stages"]["index"]["key"] in artifact["aliases"]
    meta = artifact["metadata"]
    assert (meta["dim"], meta["ntotal"], meta["metric"], meta["index_type"]) == (512, 48, "l2", "flat-l2")
    assert meta["stage_keys"]["encoder"] == summary["stages"]["encoder"]["key"]
    assert meta["metrics"]["self_retrieval_at_1"] == 1.0
    assert set(artifact["files"]) == {"index.faiss", "manifest.json"}
    assert any("pretrain/loss" in row for row in offline["history"])
    assert offline["summary"]["knn_accuracy"] == summary["metrics"]["knn_accuracy"]


def test_wandb_offline_run_holds_the_retrieval_table_with_thumbnails(first):
    """A table with images is stored as a `run_table` artifact (its JSON plus the images);
    the run's history points at it."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from lib.data.images import decode_rgb
    from lib.data.snapshot import open_snapshot, row_positions
    from lib.manifest import read_manifest

    root, summary = first
    offline = read_offline_run(summary["artifacts"]["wandb_run_dir"])
    (logged,) = [row for row in offline["history"] if "retrieval/path" in row]
    assert (logged["retrieval/_type"], logged["retrieval/nrows"], logged["retrieval/ncols"]) == ("table-file", 2, 15)
    (artifact,) = [a for a in offline["artifacts"] if a["type"] == "run_table" and a["name"].endswith("-retrieval")]
    table = json.loads(Path(artifact["files"]["retrieval.table.json"]["local_path"]).read_text())
    assert table["columns"] == ["query", "query_row", "query_label"] + [
        f"{name}_{i}" for i in (1, 2, 3) for name in ("neighbour", "row", "label", "distance")]
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


def test_flow_mirrors_the_index_folder_to_s3(tmp_path, s3_endpoint):
    s3_client(s3_endpoint).create_bucket(Bucket="flow-mirror")
    summary = run_flow(tmp_path / "artifacts", **{"mirror.url": "s3://flow-mirror/lookalike",
                                                  "mirror.endpoint_url": s3_endpoint})
    (mirrored,) = summary["artifacts"]["mirror"]
    key = summary["stages"]["index"]["key"]
    assert mirrored["url"] == f"s3://flow-mirror/lookalike/index/{key}/"
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket="flow-mirror", Prefix=f"lookalike/index/{key}/")
    assert {o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]} == {"index.faiss", "manifest.json"}


def test_unreachable_mirror_fails_the_mirror_not_the_local_result(tmp_path):
    summary = run_flow(tmp_path / "artifacts", **{"mirror.url": "s3://b/p", "mirror.endpoint_url": "http://127.0.0.1:9",
                                                  "mirror.retries": 0})
    assert "failed" in summary["artifacts"]["mirror"]
    assert summary["metrics"]["self_retrieval_at_1"] == 1.0
