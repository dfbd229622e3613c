"""W&B in offline mode writes real run files; read them back (not `disabled`, which proves nothing)."""

import pytest
from wandb_offline import read_offline_run

from lookalike.core.settings import TrackingSettings
from lookalike.reporting.lineage import ArtifactSpec
from lookalike.reporting.tracking import TrackingRun, resolve_mode


def spec(folder, name, type, files, metadata=None, references=None):
    return ArtifactSpec(
        stage="index",
        key="k1",
        name=name,
        type=type,
        folder=folder,
        files=tuple(files),
        metadata=metadata or {},
        references=references or {},
    )


def test_auto_mode_is_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode(TrackingSettings()) == "offline"


def test_offline_run_holds_metrics_and_artifact_with_metadata(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "index.faiss").write_bytes(b"abc")
    run = TrackingRun(
        TrackingSettings(mode="offline"),
        tmp_path,
        name="t",
        job_type="upload-embeddings",
        group=None,
        config={"encoder": {"epochs": 1}},
    )
    run.log({"pretrain/loss": 1.5})
    run.log_artifact(
        spec(folder, "dino-embeddings", "faiss-embeddings", ["index.faiss"], {"dim": 512}), aliases=["latest", "k1"]
    )
    run_dir = run.run_dir
    run.finish()
    offline = read_offline_run(run_dir)
    assert offline["job_type"] == "upload-embeddings"
    assert offline["config"]["encoder"] == {"epochs": 1}
    assert offline["history"][0]["pretrain/loss"] == 1.5
    (artifact,) = [a for a in offline["artifacts"] if a["name"] == "dino-embeddings"]
    assert artifact["type"] == "faiss-embeddings"
    assert artifact["aliases"] == ["k1", "latest"]
    assert artifact["metadata"]["dim"] == 512
    assert set(artifact["files"]) == {"index.faiss"}


def test_wandb_files_stay_under_the_chosen_directory(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"1")
    run = TrackingRun(TrackingSettings(mode="offline"), tmp_path / "wb", name="t", job_type="x", group=None, config={})
    run.log_artifact(spec(folder, "a", "t", ["a.bin"]), aliases=["latest"])
    run.finish()
    assert list(home.rglob("*")) == []


def test_an_input_declared_offline_is_recorded_for_sync_with_the_producers_digest(tmp_path):
    """wandb refuses `use_artifact` offline; the input is recorded as `use_artifact` records an
    artifact object (use_after_commit), which `wandb sync` turns into a used version."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "encoder.pt").write_bytes(b"weights")
    model = spec(folder, "dino-encoder", "model", ["encoder.pt"])
    producer = TrackingRun(
        TrackingSettings(mode="offline"), tmp_path, name="p", job_type="pretrain", group="g", config={}
    )
    producer.log_artifact(model, aliases=["latest", "k1"])
    consumer = TrackingRun(TrackingSettings(mode="offline"), tmp_path, name="c", job_type="embed", group="g", config={})
    consumer.use_artifact(model, aliases=["production"])
    consumer.use_artifact(spec(folder, "sample-train", "dataset", [], references={"source": "hf://datasets/x@abc"}))
    dirs = producer.run_dir, consumer.run_dir
    producer.finish()
    consumer.finish()
    made, used = (read_offline_run(d) for d in dirs)
    assert (made["inputs"], [a["name"] for a in made["artifacts"]]) == ([], ["dino-encoder"])
    assert made["group"] == used["group"] == "g"
    by_name = {a["name"]: a for a in used["inputs"]}
    assert by_name["dino-encoder"]["digest"] == made["artifacts"][0]["digest"]
    assert "production" in by_name["dino-encoder"]["aliases"]
    assert by_name["sample-train"]["references"] == {"source": "hf://datasets/x@abc"}
    assert [a["type"] for a in used["artifacts"]] == []


@pytest.mark.parametrize(
    "source, resolved, name",
    [
        ("sample", "folder:/opt/lookalike/data/fashion-mnist-sample", "sample-train"),
        ("/data/my photos/", "folder:/data/my photos", "my-photos-train"),  # a path: its name, not its layout
        ("ethz/food101", "hub:ethz/food101", "ethz-food101-train"),
    ],
)
def test_dataset_artifact_names_do_not_depend_on_the_machine(source, resolved, name):
    from lookalike.core.manifest import Manifest
    from lookalike.reporting.lineage import artifact_name, source_reference

    dataset = Manifest(
        stage="dataset",
        key="k",
        code_version=1,
        created="t",
        files=[],
        settings={"source": source, "split": "train", "resolved": resolved, "content": "hub@abc123"},
    )
    assert artifact_name("dataset", {"dataset": dataset}) == name
    assert source_reference(dataset) == ({"source": "hf://datasets/ethz/food101@abc123"} if "hub" in resolved else {})


def test_wandb_unreachable_or_refusing_the_key_is_one_clear_error(monkeypatch):
    import wandb
    from wandb.errors import AuthenticationError

    from lookalike.reporting.tracking import WandbLoadError, open_artifact, public_api

    def refuse(*args, **kwargs):
        raise AuthenticationError("Failed to verify credentials with https://api.wandb.ai")

    monkeypatch.setattr(wandb, "Api", refuse)
    with pytest.raises(WandbLoadError, match="needs W&B online with an API key.*Failed to verify credentials"):
        public_api()

    class Offline:
        def artifact(self, name, type=None):
            raise ConnectionError("Max retries exceeded with url: /graphql")

    with pytest.raises(WandbLoadError, match="cannot read W&B artifact e/p/a:production .*Max retries"):
        open_artifact(Offline(), "e/p/a:production", "faiss-embeddings")
