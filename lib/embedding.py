"""The `embeddings` stage: batched inference written in shards, resumable shard by shard.

Shard i holds the vectors of snapshot rows [i*shard_size, (i+1)*shard_size) as
`shard-iiiii.npy`, followed by its completion marker `shard-iiiii.json` (rows and
sha256). A retry embeds only shards without a valid marker. Vectors are stored raw;
the index stage normalises them when its metric needs it, so changing the index type
never invalidates embeddings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps
from torch.utils.data import DataLoader

from lib.config import EmbeddingsSettings
from lib.data.snapshot import open_snapshot
from lib.data.torchdata import SnapshotImages, worker_context
from lib.encoder import EncoderSpec, load_encoder
from lib.manifest import Manifest, atomic_path, atomic_write_bytes, sha256_file, stage_key, verified_path
from lib.progress import progress
from lib.stages import Built, StageResult, run_stage

STAGE = "embeddings"
CODE_VERSION = 1
ROW_IDS = "row_ids.npy"


def embeddings_key(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest) -> str:
    return stage_key(STAGE, section.key_fields(), {"dataset": dataset.key, "encoder": encoder.key}, CODE_VERSION)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def run_embeddings_stage(
    section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest, root: Path
) -> StageResult:
    """Embed every snapshot row with the encoder, reusing finished shards."""
    key = embeddings_key(section, dataset, encoder)

    def build(folder: Path) -> Built:
        return _embed(section, dataset, encoder, root, folder)

    return run_stage(
        root, STAGE, key, code_version=CODE_VERSION, settings=section.model_dump(mode="json"),
        inputs={"dataset": dataset.key, "encoder": encoder.key}, build=build,
    )


class ResizeToTensor:
    """Decoded RGB image -> (H, W, 3) uint8 tensor, center-fitted to the encoder's input size.

    uint8 crosses the DataLoader boundary (4x less than float); normalisation happens
    on whole batches in `normalize_batch`.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        fitted = ImageOps.fit(image, (self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(fitted, dtype=np.uint8).copy())


def normalize_batch(batch: torch.Tensor, spec: EncoderSpec, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> normalised float (N, 3, H, W) in channels_last layout.

    permute() of NHWC data already has channels_last strides, so no copy is made for it.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def embed_batch(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        return model(x).flatten(1).float().cpu().numpy()


def _embed(section: EmbeddingsSettings, dataset: Manifest, encoder: Manifest, root: Path, folder: Path) -> Built:
    started = time.perf_counter()
    model, spec = load_encoder(root, encoder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    memory_format = torch.channels_last if section.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).eval()
    snapshot = open_snapshot(root, dataset)
    n = len(snapshot)
    size = section.shard_size
    n_shards = (n + size - 1) // size
    done = {i for i in range(n_shards) if _shard_is_complete(folder, i)}
    missing = [i for i in range(n_shards) if i not in done]
    batches = shard_batches(missing, n, size, section.batch_size)
    n_rows = sum(len(b) for b in batches)

    loader = DataLoader(
        SnapshotImages(snapshot, ResizeToTensor(spec.input_size)),
        batch_sampler=batches, num_workers=section.num_workers,
        multiprocessing_context=worker_context(section.num_workers),
        pin_memory=device.type == "cuda",
    )
    pending: list[np.ndarray] = []
    shard_iter = iter(missing)
    current = next(shard_iter, None)
    with progress(n_rows, "embeddings", unit="img") as bar:
        for batch in loader:
            x = normalize_batch(batch, spec, device)
            if section.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pending.append(embed_batch(model, x, device))
            bar.update(len(batch))
            filled = sum(len(p) for p in pending)
            if current is not None and filled == min(n, (current + 1) * size) - current * size:
                _write_shard(folder, current, current * size, np.concatenate(pending))
                pending = []
                current = next(shard_iter, None)

    row_ids = np.asarray(snapshot["row_id"], dtype=np.int64)
    with atomic_path(folder / ROW_IDS) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, row_ids)
    seconds = time.perf_counter() - started
    stats = {
        "n_vectors": n,
        "dim": spec.feature_dim,
        "n_shards": n_shards,
        "shards_reused": len(done),
        "shards_computed": len(missing),
        "images_embedded": n_rows,
        "images_per_second": round(n_rows / seconds, 1) if n_rows else None,
        "device": device.type,
    }
    files = [ROW_IDS] + [shard_name(i) for i in range(n_shards)]
    return Built(files=files, stats=stats, resumed=bool(done))


def shard_batches(shards: list[int], n: int, shard_size: int, batch_size: int) -> list[list[int]]:
    """Row batches for the given shards; a batch never straddles two shards.

    So a shard is computed from the same batches whether or not its neighbours were
    already done, and a resumed run gives the same vectors as an uninterrupted one.
    """
    batches = []
    for i in shards:
        start, stop = i * shard_size, min(n, (i + 1) * shard_size)
        batches += [list(range(b, min(stop, b + batch_size))) for b in range(start, stop, batch_size)]
    return batches


def _write_shard(folder: Path, i: int, start: int, vectors: np.ndarray) -> None:
    path = folder / shard_name(i)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
    marker = {"shard": i, "start": start, "rows": len(vectors), "sha256": sha256_file(path)}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(marker).encode())


def _shard_is_complete(folder: Path, i: int) -> bool:
    path = folder / shard_name(i)
    marker = path.with_suffix(".json")
    if not (path.is_file() and marker.is_file()):
        return False
    try:
        return json.loads(marker.read_text())["sha256"] == sha256_file(path)
    except (ValueError, KeyError, OSError):
        return False


def load_embeddings(root: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 (n, dim), row ids int64 (n,)) after verifying every file."""
    row_ids = np.load(verified_path(root, manifest, ROW_IDS))
    shards = [np.load(verified_path(root, manifest, shard_name(i))) for i in range(manifest.stats["n_shards"])]
    vectors = np.concatenate(shards) if shards else np.zeros((0, manifest.stats["dim"]), np.float32)
    return vectors, row_ids
