"""Single-query latency of the retrieval app on the sample index: p50/p95 over many queries.

Two measurements, each over `--queries` different dataset images sent as PNG bytes (after
`--warmup` untimed queries):

1. in process: `IndexHolder.by_image_bytes`, the whole query path the server runs per request
   (decode, preprocess, embed with the loaded encoder, FAISS search, describe the hits);
2. over HTTP: `POST /api/search/upload` to a real `lookalike serve` process on localhost,
   timed in the client (multipart upload, the query path, JSON back), one request at a time.

The index is the `production` alias under `--artifacts-root` (default `artifacts/`, where
`make run` puts it); when there is none, `lookalike run` builds the sample index there first.

Usage:
    .venv/bin/python benchmarks/query_latency.py [--artifacts-root artifacts] [--queries 300] [--out FILE]

Writes a JSON record (and prints it); the recorded output lives in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _record import emit

REPO = Path(__file__).resolve().parents[1]
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "min_ms": round(float(ms.min()), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def ensure_index(root: Path, env: dict) -> None:
    if (root / "aliases" / "production.json").is_file():
        return
    print(f"no production index under {root}: building the sample index (lookalike run) ...", file=sys.stderr)
    subprocess.run([LOOKALIKE, "run", "--artifacts-root", str(root)], env=env, check=True, stdout=subprocess.DEVNULL)


def query_images(holder, count: int) -> list[bytes]:
    rows = sorted(holder.searcher.position)
    picked = np.random.default_rng(0).choice(rows, size=min(count, len(rows)), replace=False)
    out = []
    for row in picked:
        buffer = io.BytesIO()
        holder.searcher.image_of_row(int(row)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def in_process(holder, images: list[bytes], k: int, warmup: int) -> dict:
    for data in images[:warmup]:
        holder.by_image_bytes(data, k)
    times = []
    for data in images:
        start = time.perf_counter()
        holder.by_image_bytes(data, k)
        times.append(time.perf_counter() - start)
    return stats(times)


def over_http(root: Path, images: list[bytes], k: int, warmup: int, env: dict) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen(
        [LOOKALIKE, "serve", "--artifacts-root", str(root), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        raise SystemExit("lookalike serve exited; run it by hand to see why") from None
                    time.sleep(0.1)
            ready = time.perf_counter() - started

            def ask(data: bytes) -> None:
                response = client.post(
                    "/api/search/upload", files={"file": ("q.png", data, "image/png")}, data={"k": str(k)}
                )
                response.raise_for_status()

            for data in images[:warmup]:
                ask(data)
            times = []
            for data in images:
                start = time.perf_counter()
                ask(data)
                times.append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {**stats(times), "server_ready_s": round(ready, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts-root", type=Path, default=REPO / "artifacts")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from lookalike.serving.holder import IndexHolder

    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOOKALIKE_", "PREFECT_API_URL"))}
    with tempfile.TemporaryDirectory() as home:
        env.update(PREFECT_HOME=str(Path(home) / "prefect"), WANDB_SILENT="true")
        root = args.artifacts_root.resolve()
        ensure_index(root, env)
        start = time.perf_counter()
        holder = IndexHolder(root, "production")
        load_s = time.perf_counter() - start
        info = holder.info()
        images = query_images(holder, args.queries)
        record = {
            "benchmark": "query_latency",
            "recorded": time.strftime("%Y-%m-%d"),
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
            },
            "index": {key: info[key] for key in ("index", "encoder", "method", "ntotal", "dim", "metric")},
            "k": args.k,
            "load_s": round(load_s, 2),
            "in_process": in_process(holder, images, args.k, args.warmup),
            "http_upload": over_http(root, images, args.k, args.warmup, env),
        }
    emit(record, args.out)


if __name__ == "__main__":
    main()
