"""The `embeddings` stage: batched inference written in shards, resumable shard by shard.

Shard i holds the vectors of snapshot rows [i*shard_size, (i+1)*shard_size) as
`shard-iiiii.npy`, followed by its completion marker `shard-iiiii.json` (rows and
sha256). A retry embeds only shards without a valid marker. Vectors are stored raw;
the index stage normalises them when its metric needs it, so changing the index type
never invalidates embeddings.

Incremental add: an image that an earlier embeddings stage already embedded with the
same encoder is not embedded again. Images are matched by the content sha256 their
dataset snapshot records, so a grown, shrunk or renamed collection sends only images
it has never seen through the encoder; the rest take the stored vector, after that
stage's files verify against its manifest (`embeddings.reuse`, on by default).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.artifacts.shared_root import share_partial, store_at
from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.graph import key_for
from lookalike.core.manifest import (
    Manifest,
    atomic_path,
    atomic_write_bytes,
    sha256_file,
)
from lookalike.core.progress import progress
from lookalike.core.settings import EmbeddingsSettings
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.dataset.torch_data import decode_workers
from lookalike.stages.embeddings.reuse import KnownVectors, find_known_vectors, reuse_candidates
from lookalike.stages.embeddings.shards import ROW_IDS, STAGE, shard_name
from lookalike.stages.encoder.checkpoint import load_encoder
from lookalike.stages.inference import Embedder

LISTED_REJECTIONS = 20


def embeddings_key(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest) -> str:
    return key_for(STAGE, section.key_fields(), {"dataset": dataset.key, "encoder": encoder.key})


def run_embeddings_stage(
    section: EmbeddingsSettings,
    dataset: Manifest,
    encoder: Manifest,
    root: Path,
    dispatch: ShardDispatch | None = None,
) -> StageResult:
    """Embed every snapshot row with the encoder, reusing finished shards and (unless
    `section.reuse` is off) the vectors earlier stages hold for the same image content.

    With `dispatch`, the missing shards go to workers in groups of `section.shards_per_task`
    (see tasks/embeddings.py: a Dask cluster); the manifest is written here once all exist.
    """
    key = embeddings_key(section, dataset, encoder)

    def build(folder: Path) -> Built:
        return _embed(section, dataset, encoder, root, folder, dispatch)

    return run_stage(
        root,
        STAGE,
        key,
        settings=section.model_dump(mode="json"),
        inputs={"dataset": dataset.key, "encoder": encoder.key},
        build=build,
    )


# dispatch(folder, shard groups) -> one partial-stats dict per group, each group's shards written to folder
ShardDispatch = Callable[[Path, list[list[int]]], list[dict[str, Any]]]


def _embed(
    section: EmbeddingsSettings,
    dataset: Manifest,
    encoder: Manifest,
    root: Path,
    folder: Path,
    dispatch: ShardDispatch | None = None,
) -> Built:
    """Embed the shards without a valid marker, here or through `dispatch` (workers that
    write their shards into `folder`), then write the row ids once every shard exists."""
    started = time.perf_counter()
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    size = section.shard_size
    n_shards = (n + size - 1) // size
    done = {i for i in range(n_shards) if _shard_is_complete(folder, i)}
    missing = [i for i in range(n_shards) if i not in done]
    if not missing:
        parts = []
    elif dispatch is not None:
        per_task = section.shards_per_task
        parts = dispatch(folder, [missing[g : g + per_task] for g in range(0, len(missing), per_task)])
    else:
        parts = [embed_shards(section, dataset, encoder, root, folder, missing)]
    if dispatch is not None:  # workers on other machines wrote theirs to the shared store
        store_at(root).pull_partial(STAGE, folder.name)
    absent = [i for i in missing if not _shard_is_complete(folder, i)] if dispatch is not None else []
    if absent:  # a worker returned without its shards: a retry embeds just these
        raise RuntimeError(f"embedding shards {absent[:10]} are missing after the workers finished")

    row_ids = np.asarray(snapshot["row_id"], dtype=np.int64)
    with atomic_path(folder / ROW_IDS) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, row_ids)
    seconds = time.perf_counter() - started
    n_rows = sum(part["images_embedded"] for part in parts)
    stats = {
        "n_vectors": n,
        "dim": _feature_dim(root, encoder, folder, n_shards),
        "n_shards": n_shards,
        "shards_reused": len(done),
        "shards_computed": len(missing),
        "images_embedded": n_rows,
        "images_reused": sum(part["images_reused"] for part in parts),
        "reused_from": list(dict.fromkeys(k for part in parts for k in part["reused_from"])),
        "reuse_rejected": [r for part in parts for r in part["reuse_rejected"]][:LISTED_REJECTIONS],
        "images_per_second": round(n_rows / seconds, 1) if n_rows else None,
        "device": ",".join(sorted({part["device"] for part in parts})) or None,
        "decode_workers": max((part["decode_workers"] for part in parts), default=0),
    }
    if dispatch is not None:
        stats["workers"] = len({part["worker"] for part in parts})
    files = [ROW_IDS] + [shard_name(i) for i in range(n_shards)]
    return Built(files=files, stats=stats, resumed=bool(done))


def _feature_dim(root: Path, encoder: Manifest, folder: Path, n_shards: int) -> int:
    if n_shards:
        return int(np.load(folder / shard_name(0), mmap_mode="r").shape[1])
    return load_encoder(root, encoder)[1].feature_dim  # no shards: only the checkpoint knows


def embed_shards(
    section: EmbeddingsSettings,
    dataset: Manifest,
    encoder: Manifest,
    root: Path,
    folder: Path,
    shards: list[int],
    in_cluster: bool = False,
) -> dict[str, Any]:
    """Embed and write `shards` of the stage folder (any already complete are left alone);
    the partial stats `_embed` sums. What one worker runs for its group of shards (`in_cluster`: a
    Dask worker, where num_workers=auto decodes in the worker's own process)."""
    shards = [i for i in shards if not _shard_is_complete(folder, i)]
    embedder = Embedder(root, encoder, channels_last=section.channels_last)
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    size = section.shard_size
    shas = snapshot.data.column("sha256").to_pylist()
    known = KnownVectors(embedder.dim)
    if section.reuse and shards:
        wanted = [shas[row] for i in shards for row in range(i * size, min(n, (i + 1) * size))]
        known = find_known_vectors(root, reuse_candidates(section, encoder, root), wanted, embedder.dim)
    plans = plan_shards(shards, n, size, np.fromiter((known.has(sha) for sha in shas), dtype=bool, count=n))
    batches = shard_batches(plans, section.batch_size)
    n_rows = sum(len(b) for b in batches)

    workers = (
        0
        if in_cluster and section.num_workers == "auto"
        else decode_workers(section.num_workers, n_rows, dataset.stats)
    )
    # every missing row has a stored vector: start no workers
    loader: Iterable[Any] = embedder.loader(snapshot, batch_sampler=batches, num_workers=workers) if batches else []
    embedded: list[np.ndarray] = []
    queue = iter(plans)
    with progress(n_rows, "embeddings", unit="img") as bar:
        waiting = _write_ready(folder, next(queue, None), queue, embedded, known, shas)
        for batch in loader:
            embedded.append(embedder.embed_pixels(batch))
            waiting = _write_ready(folder, waiting, queue, embedded, known, shas)
            bar.set_postfix(shards=f"{len(plans) if waiting is None else plans.index(waiting)}/{len(plans)}")
            bar.update(len(batch))
    return {
        "shards": shards,
        "images_embedded": n_rows,
        "images_reused": sum(len(plan.reuse) for plan in plans),
        "reused_from": known.sources,
        "reuse_rejected": known.rejected,
        "device": embedder.device.type,
        "decode_workers": workers if batches else 0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@dataclass(frozen=True)
class ShardPlan:
    """How one missing shard gets its vectors: rows in `embed` go through the encoder,
    rows in `reuse` take a stored vector (both in row order)."""

    shard: int
    start: int
    stop: int
    embed: list[int]
    reuse: list[int]


def plan_shards(shards: list[int], n: int, shard_size: int, reusable: np.ndarray) -> list[ShardPlan]:
    """One plan per missing shard; `reusable[row]` says a stored vector exists for that row."""
    plans = []
    for i in shards:
        rows = np.arange(i * shard_size, min(n, (i + 1) * shard_size))
        plans.append(
            ShardPlan(i, int(rows[0]), int(rows[-1]) + 1, rows[~reusable[rows]].tolist(), rows[reusable[rows]].tolist())
        )
    return plans


def shard_batches(plans: list[ShardPlan], batch_size: int) -> list[list[int]]:
    """Batches of the rows each shard embeds; a batch never straddles two shards.

    So a shard is computed from the same batches whether or not its neighbours were
    already done, and a resumed run gives the same vectors as an uninterrupted one.
    """
    return [plan.embed[b : b + batch_size] for plan in plans for b in range(0, len(plan.embed), batch_size)]


def _write_ready(
    folder: Path,
    plan: ShardPlan | None,
    queue: Iterator[ShardPlan],
    embedded: list[np.ndarray],
    known: KnownVectors,
    shas: list[str],
) -> ShardPlan | None:
    """Write, in row order, every shard whose vectors are all at hand; the first one still waiting.

    Consumes `embedded` (the batches computed since the last shard was written). A shard
    whose rows all have stored vectors is written as soon as its turn comes.
    """
    while plan is not None and sum(len(e) for e in embedded) == len(plan.embed):
        vectors = np.concatenate(embedded) if embedded else np.zeros((0, known.dim), np.float32)
        if plan.reuse:
            merged = np.empty((plan.stop - plan.start, known.dim), np.float32)
            merged[np.asarray(plan.embed, dtype=np.int64) - plan.start] = vectors
            merged[np.asarray(plan.reuse, dtype=np.int64) - plan.start] = known.take([shas[r] for r in plan.reuse])
            vectors = merged
        _write_shard(folder, plan.shard, plan.start, vectors)
        embedded.clear()
        plan = next(queue, None)
    return plan


def _write_shard(folder: Path, i: int, start: int, vectors: np.ndarray) -> None:
    path = folder / shard_name(i)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    marker = {"shard": i, "start": start, "rows": len(vectors), "sha256": sha256_file(path)}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(marker).encode())
    share_partial(folder, [path.name, path.with_suffix(".json").name])  # a retry on another machine resumes here


def _shard_is_complete(folder: Path, i: int) -> bool:
    path = folder / shard_name(i)
    marker = path.with_suffix(".json")
    if not (path.is_file() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text())["sha256"] == sha256_file(path)
    except (ValueError, KeyError, OSError):
        return False
