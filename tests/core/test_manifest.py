import json
import time

import pytest

from lookalike.artifacts.stage_runner import Built, run_stage
from lookalike.core.manifest import IntegrityError, find_manifest, stage_dir, stage_key, verified_path, write_manifest


def test_stage_key_changes_with_settings_inputs_and_code_version():
    base = stage_key("index", {"type": "flat-l2"}, {"embeddings": "abc"}, 1)
    assert base == stage_key("index", {"type": "flat-l2"}, {"embeddings": "abc"}, 1)
    assert base != stage_key("index", {"type": "hnsw"}, {"embeddings": "abc"}, 1)
    assert base != stage_key("index", {"type": "flat-l2"}, {"embeddings": "abd"}, 1)
    assert base != stage_key("index", {"type": "flat-l2"}, {"embeddings": "abc"}, 2)


def test_folder_without_manifest_is_unfinished(tmp_path):
    folder = stage_dir(tmp_path, "index", "k1")
    folder.mkdir(parents=True)
    (folder / "index.faiss").write_bytes(b"half written")
    assert find_manifest(tmp_path, "index", "k1") is None


def test_manifest_lists_sha256_and_verification_refuses_tampering(tmp_path):
    folder = stage_dir(tmp_path, "index", "k1")
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"0123456789")
    manifest = write_manifest(
        folder,
        stage="index",
        key="k1",
        code_version=1,
        settings={},
        inputs={},
        files=["data.bin"],
        stats={},
        timings={},
    )
    assert json.loads((folder / "manifest.json").read_text())["files"][0]["bytes"] == 10
    assert verified_path(tmp_path, manifest, "data.bin") == folder / "data.bin"
    (folder / "data.bin").write_bytes(b"0123456780")
    with pytest.raises(IntegrityError, match="sha256"):
        verified_path(tmp_path, manifest, "data.bin")


def test_run_stage_builds_once_then_reports_cached(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return Built(files=["out.txt"], stats={"n": 1})

    first = run_stage(tmp_path, "dataset", "k", settings={}, inputs={}, build=build)
    second = run_stage(tmp_path, "dataset", "k", settings={}, inputs={}, build=build)
    assert (first.status, second.status) == ("computed", "cached")
    assert len(calls) == 1
    assert second.manifest == first.manifest


def test_a_stage_records_its_cpu_seconds_and_the_peak_memory_when_it_ends(tmp_path):
    """What the end-to-end scale benchmark reads per stage: CPU seconds of the build alone, and the
    process's peak RSS when the stage ended (the stage that raises it set the peak)."""
    import numpy as np

    def build(folder):
        held = np.ones(300 * 2**20 // 8)  # 300 MB touched
        spent = time.process_time()
        while time.process_time() - spent < 0.3:
            pass
        (folder / "out.txt").write_text(str(held.sum()))
        return Built(files=["out.txt"], stats={})

    timings = run_stage(tmp_path, "dataset", "k", settings={}, inputs={}, build=build).manifest.timings
    assert 0.25 <= timings["cpu_seconds"] < 5 and timings["peak_rss_mb"] >= 300


def test_failed_build_leaves_no_manifest(tmp_path):
    def build(folder):
        (folder / "partial").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "dataset", "k", settings={}, inputs={}, build=build)
    assert find_manifest(tmp_path, "dataset", "k") is None


@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"stage": "index", "key": "k1", "files": [', "is not valid JSON: Expecting value"),
        (b"\xff\xfe not text", "is not valid JSON"),
        (json.dumps({"stage": "index"}).encode(), "is not a lookalike manifest (key: Field required)"),
    ],
)
def test_a_damaged_manifest_is_named_as_damaged_not_as_missing(tmp_path, content, says):
    folder = stage_dir(tmp_path, "index", "k1")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_bytes(content)
    with pytest.raises(IntegrityError, match="manifest.json " + says.replace("(", r"\(").replace(")", r"\)")):
        find_manifest(tmp_path, "index", "k1")
