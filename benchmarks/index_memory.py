"""Peak memory of the index stage alone: every embedding in memory (before) vs a shard at a time (after).

The index stage used to load every embedding, copy it prepared, whiten it into a third copy and
build the index from that (a fourth copy inside FAISS): 3-4x the vectors' size at peak, ~14-18 GB
for 1M x 1,152-d float32. It now reads the rows the whitening and the index train on and the stats
query with, then prepares, whitens and adds one shard at a time (`type=auto` and `dedupe` keep the
in-memory path).

For each case (vectors x dim, index type) the script writes synthetic embeddings in the embeddings
stage's own layout (`shard-*.npy` of `--shard-size` rows + `row_ids.npy` + a manifest; anisotropic
Gaussian vectors), then builds the index stage alone
(`lookalike.stages.index.stage.run_index_stage`, a fresh stage folder each time) in a child process
under `/usr/bin/time -v`, once with the code of `--before` (a git ref, exported with `git archive`
and put first on PYTHONPATH) and once with this working tree's. Peak RSS is time's "Maximum
resident set size"; seconds are the child's wall clock around the stage. The written `index.faiss`
sha256 of both builds is compared. The dataset and encoder the stage reads (for metadata and the
manifest chain) are a 48-image sample dataset and a random-init encoder made once by this script,
so the metadata table's memory (a few MB at this size) is not part of the figures.

Usage:
    .venv/bin/python benchmarks/index_memory.py [--cases 1000000x1152:flat-l2 300000x1152:sq8]
        [--before main] [--shard-size 1024] [--work-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from _record import emit

REPO = Path(__file__).resolve().parents[1]


def child(job: dict) -> None:
    """Run inside the measured process: the index stage alone, or only its imports (the floor)."""
    import lookalike
    from lookalike.artifacts.shared_root import read_manifest
    from lookalike.core.settings import IndexSettings
    from lookalike.stages.index.stage import run_index_stage

    root = Path(job["root"])
    embeddings = read_manifest(root, "embeddings", job["embeddings"])
    out = {"lookalike": str(Path(lookalike.__file__).parent)}
    if job.get("floor"):
        print(json.dumps(out))
        return
    started = time.perf_counter()
    result = run_index_stage(IndexSettings(type=job["type"]), embeddings, root)
    out["seconds"] = round(time.perf_counter() - started, 1)
    manifest = result.manifest
    out.update(
        status=result.status,
        key=manifest.key,
        index_sha256=manifest.file("index.faiss").sha256,
        index_bytes=manifest.file("index.faiss").bytes,
        **{k: manifest.stats[k] for k in ("ntotal", "factory", "self_retrieval_at_1", "recall_at_10")},
    )
    print(json.dumps(out))


def prepare_root(work: Path) -> tuple[Path, str, str]:
    """A root holding a 48-image dataset stage and a random-init encoder stage: (root, dataset, encoder)."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.encoder.stage import run_encoder_stage

    root = work / "artifacts"
    settings = load_settings(
        {"dataset.limit": 48, "encoder.epochs": 0, "encoder.input_size": 16, "artifacts_root": str(root)}
    )
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    return root, dataset.key, encoder.key


def write_embeddings(root: Path, dataset: str, encoder: str, n: int, dim: int, shard_size: int) -> str:
    """Synthetic embeddings of n x dim in the stage's layout; their key (reused when already written)."""
    from lookalike.core.manifest import write_manifest
    from lookalike.stages.embeddings.shards import ROW_IDS, shard_name

    key = f"{n:010x}{dim:06x}"
    folder = root / "embeddings" / key
    if (folder / "manifest.json").is_file():
        return key
    folder.mkdir(parents=True, exist_ok=True)
    scale = np.geomspace(4, 0.05, dim).astype(np.float32)  # anisotropic, as encoder features are
    names = [ROW_IDS]
    np.save(folder / ROW_IDS, np.arange(n, dtype=np.int64))
    for i, start in enumerate(range(0, n, shard_size)):
        rng = np.random.default_rng(i)
        np.save(folder / shard_name(i), rng.standard_normal((min(shard_size, n - start), dim), np.float32) * scale)
        names.append(shard_name(i))
    write_manifest(
        folder,
        stage="embeddings",
        key=key,
        code_version=1,
        settings={"shard_size": shard_size, "synthetic": True},
        inputs={"dataset": dataset, "encoder": encoder},
        files=names,
        stats={"n_shards": len(names) - 1, "dim": dim},
        timings={},
    )
    return key


def measured(job: dict, lib: Path) -> dict:
    """The child's own report plus /usr/bin/time -v's peak RSS and wall clock."""
    env = {**os.environ, "PYTHONPATH": str(lib), "LOOKALIKE_TRACKING__MODE": "disabled"}
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"failed": proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    report["peak_rss_mib"] = round(peak_kb / 1024, 1)
    report["process_wall"] = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
    return report


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["1000000x1152:flat-l2", "300000x1152:sq8"])
    parser.add_argument("--before", default="main", help="git ref whose lib/ is the 'before' code")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/index-memory"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    before_lib = work / "before" / "lib"
    shutil.rmtree(work / "before", ignore_errors=True)
    (work / "before").mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "lib"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(work / "before")], input=archive.stdout, check=True)
    code = {
        "before": (
            before_lib,
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", args.before], capture_output=True, text=True
            ).stdout.strip(),
        ),
        "after": (
            REPO / "lib",
            subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        ),
    }
    root, dataset, encoder = prepare_root(work)
    rows = []
    for case in args.cases:
        size, kind = case.split(":")
        n, dim = (int(v) for v in size.split("x"))
        started = time.perf_counter()
        key = write_embeddings(root, dataset, encoder, n, dim, args.shard_size)
        row = {"vectors": n, "dim": dim, "type": kind, "vector_gib": round(n * dim * 4 / 2**30, 2)}
        row["write_seconds"] = round(time.perf_counter() - started, 1)
        row["floor"] = measured({"root": str(root), "embeddings": key, "floor": True}, REPO / "lib")
        for name in ("after", "before"):
            lib, ref = code[name]
            needed = (3.1 if name == "before" else 1.3) * n * dim * 4 / 2**30 + 1.5
            available = mem_available_gib()
            if available < needed:
                row[name] = {
                    "skipped": f"MemAvailable {available} GiB < ~{needed:.1f} GiB this build may need",
                    "ref": ref,
                }
                continue
            shutil.rmtree(root / "index", ignore_errors=True)  # same key before and after: build afresh
            load = os.getloadavg()
            row[name] = {"ref": ref, "mem_available_gib": available, "loadavg_1m_at_start": round(load[0], 2)}
            row[name].update(measured({"root": str(root), "embeddings": key, "type": kind}, lib))
            print(json.dumps({case: {name: row[name]}}), file=sys.stderr, flush=True)
        if "index_sha256" in row["before"] and "index_sha256" in row["after"]:
            row["same_index_file"] = row["before"]["index_sha256"] == row["after"]["index_sha256"]
        rows.append(row)
    emit(
        {
            "benchmark": "index_memory",
            "date": date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30, 1)} GiB",
            "note": "taken on a shared 2-core machine (other engineers' tests and benchmarks ran at the same time, "
            "see each run's loadavg): read the seconds as an order of magnitude, peak RSS does not depend on load",
            "shard_size": args.shard_size,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
