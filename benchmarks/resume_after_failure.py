"""How long the re-run after an embedding failure takes, against a full run, on the sample.

Three `lookalike run` processes, timed end to end (process start, Prefect's temporary
server, the work, the exit), with default settings on the bundled sample:

1. a run whose embedding stage fails part-way (the test fault injector in tests/faults
   raises at an embedding batch; `embeddings.retries=0` so the failure ends the run);
2. the same command again: dataset and encoder are cached, embeddings resume from their
   finished shards, index and evaluation are computed;
3. the same command in a fresh artifacts root: the full run the re-run is compared with.

Usage:
    .venv/bin/python benchmarks/resume_after_failure.py [--fail-at-batch 6] [--out FILE]

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import emit

REPO = Path(__file__).resolve().parents[1]
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def timed_run(root: Path, home: Path, faults: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "PREFECT_API_URL"))}
    env.update(PREFECT_HOME=str(home / "prefect"), WANDB_SILENT="true")
    if faults:
        env["PYTHONPATH"] = str(REPO / "tests" / "faults")
        env["FAULT_INJECTION"] = json.dumps(faults)
    command = [LOOKALIKE, "run", "--json", "--artifacts-root", str(root), "--set", "embeddings.retries=0"]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    record = {"seconds": round(seconds, 2), "exit_code": proc.returncode}
    if proc.returncode == 0:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        record["stages"] = {
            name: {k: s[k] for k in ("status", "seconds", "reused")} for name, s in summary["stages"].items()
        }
    else:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        record["error"] = errors[-1] if errors else proc.stderr.strip()[-300:]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fail-at-batch", type=int, default=6, help="embedding batch (1-based) that raises in the failing run"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON record here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        home = Path(tmp)
        failed = timed_run(home / "resumed", home, {"embed_fail_at_batch": args.fail_at_batch})
        assert failed["exit_code"] != 0, "the injected failure did not fail the run"
        rerun = timed_run(home / "resumed", home)
        full = timed_run(home / "fresh", home)
    assert rerun["exit_code"] == 0 and full["exit_code"] == 0, (rerun, full)
    record = {
        "benchmark": "resume_after_failure",
        "dataset": "bundled sample (3,000 images), default settings",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "failed_run": failed,
        "rerun_after_failure": rerun,
        "full_run": full,
        "rerun_over_full": round(rerun["seconds"] / full["seconds"], 4),
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
