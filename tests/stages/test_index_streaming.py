"""The index stage reads the embeddings a shard at a time for non-auto types without dedupe: the same
index file and stats as building over every vector in memory, in the memory of one copy."""

from __future__ import annotations

import shutil
import tracemalloc

import faiss
import numpy as np
import pytest

from lookalike.core.manifest import Manifest, write_manifest
from lookalike.core.settings import IndexSettings
from lookalike.stages.embeddings.shards import ROW_IDS, shard_name
from lookalike.stages.index import factory, whitening
from lookalike.stages.index.factory import INDEX_FILE
from lookalike.stages.index.stage import run_index_stage

N, DIM, SHARD = 6000, 48, 700  # 9 shards, the last one short


def synthetic_embeddings(root, tiny_chain, n: int = N, dim: int = DIM, shard: int = SHARD, seed: int = 0) -> Manifest:
    """An embeddings stage of anisotropic random vectors (some exact duplicates, so ties) in `shard`-row
    shards, whose dataset and encoder are the tiny chain's (the index stage reads the dataset for metadata)."""
    shutil.copytree(tiny_chain, root)
    dataset = next((root / "dataset").glob("*/manifest.json")).parent.name
    encoder = next((root / "encoder").glob("*/manifest.json")).parent.name
    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((n, dim)) * np.geomspace(5, 0.05, dim)).astype(np.float32)
    vectors[n // 2 : n // 2 + 20] = vectors[3]
    key = f"{seed:016x}"
    folder = root / "embeddings" / key
    folder.mkdir(parents=True)
    np.save(folder / ROW_IDS, np.arange(n, dtype=np.int64) + 10)
    names = [ROW_IDS]
    for i, start in enumerate(range(0, n, shard)):
        np.save(folder / shard_name(i), vectors[start : start + shard])
        names.append(shard_name(i))
    return write_manifest(
        folder,
        stage="embeddings",
        key=key,
        code_version=1,
        settings={"shard_size": shard},
        inputs={"dataset": dataset, "encoder": encoder},
        files=names,
        stats={"n_shards": len(names) - 1, "dim": dim},
        timings={},
    )


@pytest.fixture
def small_samples(monkeypatch):
    # below N, so the whitening and the index train on a seeded sample and the stats query a sample
    monkeypatch.setattr(whitening, "TRAIN_SAMPLE", 2500)
    monkeypatch.setattr(factory, "TRAIN_SAMPLE", 2500)
    monkeypatch.setattr(factory, "EVAL_QUERIES", 900)


@pytest.mark.parametrize("name", ["flat-l2", "ivf-flat", "sq8", "ivf-pqfs-rflat", "ip:IVF64,SQ8", "hnsw"])
def test_streamed_index_is_byte_identical_to_the_in_memory_build(tmp_path, tiny_chain, small_samples, name):
    from lookalike.stages.index.stage import _index_in_memory  # the path auto and dedupe still take

    root = tmp_path / "artifacts"
    embeddings = synthetic_embeddings(root, tiny_chain)
    ivf = "ivf" in name.lower()
    section = IndexSettings(type=name, nlist=64 if ivf else None, nprobe=2)
    manifest = run_index_stage(section, embeddings, root).manifest
    reference = _index_in_memory(section, embeddings, root)
    written = (root / "index" / manifest.key / INDEX_FILE).read_bytes()
    assert written == faiss.serialize_index(reference.whitening.wrap(reference.index)).tobytes()
    stats = manifest.stats
    assert stats["whitening"] == reference.whitening.stats() and "2500 vectors" in stats["whitening"]["why"]
    assert (stats["self_retrieval_at_1"], stats["recall_at_10"]) == (reference.self_at_1, reference.recall)
    assert (stats["eval_queries"], stats["dim"], stats["ntotal"]) == (900, DIM, N)
    assert stats["search_params"] == reference.params
    if ivf:  # 2 lists of 64 probed: measured against exact search, not taken as 1
        assert 0 < stats["recall_at_10"] < 1


def test_index_stage_holds_less_than_one_copy_of_the_vectors_in_numpy(tmp_path, tiny_chain, small_samples):
    """The shards, the prepared and the whitened vectors were each a full copy at once (3-4x the
    vectors at peak); now the largest numpy arrays are one shard and the sampled rows."""
    root = tmp_path / "artifacts"
    embeddings = synthetic_embeddings(root, tiny_chain, n=30_000, shard=1000)
    tracemalloc.start()
    try:
        run_index_stage(IndexSettings(type="sq8"), embeddings, root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * 30_000 * DIM * 4
