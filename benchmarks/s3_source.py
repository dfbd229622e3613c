"""The dataset stage from a bucket (issue 40, S3): camera-sized JPEGs served by moto's S3 server on localhost,
`dataset.source=s3://bucket/prefix/`, a first run and a cached re-run, with the listing and hashing rates.

    .venv/bin/python benchmarks/s3_source.py --folder /data/camera-10k --out benchmarks/results/s3_source_camera.json

1. Serve: moto's threaded S3 server (`moto.server.ThreadedMotoServer`, as the tests use it) in this process on a
   free localhost port; objects above 64 KiB spool to temporary files (`MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`), not
   memory. Upload: every JPEG under `camera/` by boto3's transfer manager, `--upload-threads` at a time.
2. Listing and hashing, each in a fresh process (what the dataset key costs): one paginated listing of the
   prefix; the content hashes of every object on an empty memo (each object read and hashed), then again from
   the memo (size and ETag unchanged: no object read).
3. The dataset stage (`run_dataset_stage`, default settings but `dataset.source`), each run a fresh process:
   the first run on an empty artifacts root (listing, hashing every object for the key, then reading each object
   again to check, hash and store it in the snapshot's parts), and a cached re-run (listing and the memo give
   the same key: nothing read). Wall seconds around each process and the stage's own seconds inside it, the
   process's peak RSS (`/usr/bin/time -v` where it exists).

Rates: objects/s and MB/s (10^6 bytes) of the objects' bytes. The server shares the machine (and its cores) with
the client, so the rates are those of the client and a local server together, not of a remote bucket.
`--limit N` uploads and measures the first N files (cam00000 ... in name order).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET, PREFIX = "lookalike-bench", "camera"

# each phase runs in a fresh process, as a run would: no listing or hash kept from the one before
PHASE_SCRIPT = """
import json, sys, time
from pathlib import Path

def main():
    phase, url, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    started = time.perf_counter()
    if phase == "listing":
        from lookalike.stages.dataset.listing import list_files
        t = time.perf_counter()
        listing = list_files(url)
        out = {"objects": len(listing.files), "bytes": sum(f.size for f in listing.files),
               "seconds": time.perf_counter() - t}
    elif phase == "hashing":
        from lookalike.stages.dataset.content_hashes import hash_listing, memo_path
        from lookalike.stages.dataset.listing import list_files
        listing = list_files(url)
        t = time.perf_counter()
        hashed = hash_listing(listing, memo_path(root))
        out = {"objects": len(hashed.files), "bytes": sum(f.size for f in hashed.files), "read": hashed.hashed,
               "from_memo": hashed.reused, "unreadable": len(hashed.unreadable), "seconds": time.perf_counter() - t}
    else:
        from lookalike.core.settings import load_settings
        from lookalike.stages.dataset.stage import run_dataset_stage
        settings = load_settings({"artifacts_root": str(root), "dataset.source": url})
        t = time.perf_counter()
        result = run_dataset_stage(settings.dataset, root)
        stats = result.manifest.stats
        out = {"status": result.status, "key": result.manifest.key, "seconds": time.perf_counter() - t,
               "n_images": stats["n_images"], "n_skipped": stats["n_skipped"], "storage": stats.get("storage")}
    out["process_seconds_inside"] = time.perf_counter() - started
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload(client, files: list[Path], folder: Path, threads: int) -> dict:
    from boto3.s3.transfer import TransferConfig
    from s3transfer.manager import TransferManager

    config = TransferConfig(max_concurrency=threads, use_threads=True)
    started = time.perf_counter()
    with TransferManager(client, config) as manager:  # waits for every transfer on leaving
        futures = [
            manager.upload(str(f), BUCKET, f"{PREFIX}/{f.relative_to(folder).as_posix()}", extra_args={}) for f in files
        ]
    for future in futures:
        future.result()  # raises what a transfer raised
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in files)
    return {"threads": threads, "seconds": round(seconds, 2), **rates(len(files), size, seconds)}


def rates(objects: int, size: int | None, seconds: float) -> dict:
    """objects/s, and MB/s of the objects' bytes where they were read (`size`)."""
    out = {"objects_per_second": round(objects / seconds, 1) if seconds else None}
    if size is not None:
        out["mb_per_second"] = round(size / 1e6 / seconds, 1) if seconds else None
    return out


def run_phase(phase: str, url: str, root: Path, env: dict) -> dict:
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    load = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(
        [*timer, sys.executable, "-c", PHASE_SCRIPT, phase, url, str(root)],
        env=env,
        cwd=env["TMPDIR"],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{phase} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_wall_seconds"] = round(wall, 2)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if peak:
        out["peak_rss_mb"] = round(int(peak.group(1)) / 1024)
    out["load_average_before"] = [round(x, 1) for x in load]
    out["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    for name in ("seconds", "process_seconds_inside"):
        out[name] = round(out[name], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, default=Path("/data/camera-10k"))
    ap.add_argument("--limit", type=int, help="the first N files only")
    ap.add_argument("--upload-threads", type=int, default=16)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-s3-source")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--note", default="", help="recorded as is (e.g. that the machine was shared)")
    args = ap.parse_args(argv)

    every = sorted(args.folder.rglob("*.jpg"), key=lambda p: p.name)
    files = every[: args.limit] if args.limit else every
    size = sum(f.stat().st_size for f in files)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    spool = args.work_dir / "server"
    temporary = tempfile.gettempdir()
    spool.mkdir(parents=True)
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(credentials, MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(64 << 10), TMPDIR=str(spool))
    tempfile.tempdir = None  # the server's spooled objects go under the work dir, removed at the end

    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=args.upload_threads))
        client.create_bucket(Bucket=BUCKET)
        print(f"uploading {len(files)} files, {size / 1e9:.2f} GB to {endpoint}", file=sys.stderr)
        record: dict = {
            "benchmark": "s3_source",
            "folder": str(args.folder),
            "objects": len(files),
            "of": len(every),
            "bytes": size,
            "url": f"s3://{BUCKET}/{PREFIX}/",
            "server": "moto ThreadedMotoServer on 127.0.0.1 (this machine)",
            "cores": len(os.sched_getaffinity(0)),
            "machine": f"{platform.node()} ({os.cpu_count()} cpus)",
            "note": args.note,
            "upload": upload(client, files, args.folder, args.upload_threads),
        }
        print("upload", record["upload"], file=sys.stderr)
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO / "lib"),
            "AWS_ENDPOINT_URL": endpoint,
            "WANDB_MODE": "disabled",
            "TMPDIR": temporary,
        }
        env.pop("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE")
        url = record["url"]
        listing = run_phase("listing", url, args.work_dir / "root-hashing", env)
        record["listing"] = {**listing, **rates(listing["objects"], None, listing["seconds"])}
        print("listing", record["listing"], file=sys.stderr)
        for name in ("hashing_first", "hashing_from_memo"):
            hashed = run_phase("hashing", url, args.work_dir / "root-hashing", env)
            read = hashed["bytes"] if hashed["read"] == hashed["objects"] else None
            record[name] = {**hashed, **rates(hashed["objects"], read, hashed["seconds"])}
            print(name, record[name], file=sys.stderr)
        root = args.work_dir / "root-stage"
        for name in ("stage_first_run", "stage_cached_rerun"):
            stage = run_phase("stage", url, root, env)
            record[name] = {
                **stage,
                **rates(len(files), size if stage["status"] != "cached" else None, stage["seconds"]),
            }
            print(name, record[name], file=sys.stderr)
        if record["stage_cached_rerun"]["status"] != "cached":
            sys.exit(f"the re-run was not cached: {record['stage_cached_rerun']}")
    finally:
        server.stop()
        shutil.rmtree(args.work_dir, ignore_errors=True)
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
