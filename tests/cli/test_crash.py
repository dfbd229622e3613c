"""A native crash inside a stage (lib/lookalike/cli/crash.py): one `error:` line naming the stage and the index type,
then the next run resumes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# A chain's index stage, then an evaluation stage over it whose build aborts the process when asked, as the
# C++ runtime does when FAISS throws inside an OpenMP region (issue 44).
SCRIPT = """
import os, sys
from pathlib import Path
from lookalike.artifacts.stage_runner import Built, run_stage
from lookalike.cli.crash import reported_native_crashes

root, abort = Path(sys.argv[1]), sys.argv[2] == "abort"

def index(folder):
    (folder / "index.faiss").write_bytes(b"x")
    return Built(files=["index.faiss"], stats={"type": "hnsw", "chosen": "hnsw", "factory": "HNSW32"})

def evaluation(folder):
    (folder / "map.json").write_text("{}")
    if abort:
        os.abort()
    return Built(files=["map.json"], stats={})

with reported_native_crashes():
    built = run_stage(root, "index", "a" * 16, settings={"type": "hnsw"}, inputs={}, build=index)
    done = run_stage(root, "evaluation", "b" * 16, settings={}, inputs={"index": "a" * 16}, build=evaluation)
print(built.status, done.status)
"""


def run(root: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(root), mode], capture_output=True, text=True, timeout=120)


def test_a_native_abort_in_a_stage_is_one_error_line_naming_the_stage_and_index_type_and_the_next_run_resumes(
    tmp_path,
):
    root = tmp_path / "artifacts"
    crashed = run(root, "abort")
    assert crashed.returncode == -signal.SIGABRT
    errors = [line for line in crashed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors == crashed.stderr.strip().splitlines()[-1:], crashed.stderr
    assert "the evaluation stage with index type hnsw (HNSW32) crashed in native code (SIGABRT)" in errors[0]
    assert "run the same command again to resume" in errors[0] and "Traceback" not in crashed.stderr
    saved = Path(errors[0].rsplit("Python traceback: ", 1)[1])
    assert "Fatal Python error: Aborted" in saved.read_text() and "in evaluation" in saved.read_text()
    shutil.rmtree(saved.parent)  # kept for the user to read; not for the test run to litter
    assert not (root / "evaluation" / ("b" * 16) / "manifest.json").exists()

    resumed = run(root, "finish")
    assert resumed.returncode == 0 and resumed.stdout.split() == ["cached", "computed"], resumed.stderr
    assert resumed.stderr == ""  # a run that ends by itself leaves the watcher silent
    assert json.loads((root / "evaluation" / ("b" * 16) / "manifest.json").read_text())["inputs"] == {"index": "a" * 16}
