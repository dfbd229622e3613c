"""W&B in offline mode writes real run files; read them back (not `disabled`, which proves nothing)."""

from lib.config import TrackingSettings
from lib.tracking import TrackingRun, read_offline_run, resolve_mode


def test_auto_mode_is_offline_without_an_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode(TrackingSettings()) == "offline"


def test_offline_run_holds_metrics_and_artifact_with_metadata(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "index.faiss").write_bytes(b"abc")
    run = TrackingRun(TrackingSettings(mode="offline"), tmp_path, name="t", job_type="upload-embeddings",
                      group=None, config={"encoder": {"epochs": 1}})
    run.log({"pretrain/loss": 1.5})
    run.log_folder_artifact(name="dino-embeddings", type="faiss-embeddings", folder=folder,
                            files=["index.faiss"], metadata={"dim": 512}, aliases=["latest", "k1"])
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
    run.log_folder_artifact(name="a", type="t", folder=folder, files=["a.bin"], metadata={}, aliases=["latest"])
    run.finish()
    assert list(home.rglob("*")) == []
