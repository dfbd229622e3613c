"""The `index` stage: a FAISS index over a finished embeddings stage, ids = dataset row ids.

What an index type means and how it is built, searched and measured is `lookalike.stages.index.factory`;
`index.type=auto` is chosen by `lookalike.stages.index.auto`; the vectors are whitened first
(`lookalike.stages.index.whitening`, inside the written index). This module keys the stage and writes
its folder: `index.faiss` with the search knobs and quality stats in the manifest, and `metadata.parquet`,
what is known about each row (`lookalike.stages.index.metadata`), for hits and filters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from lookalike.artifacts.shared_root import read_manifest
from lookalike.artifacts.stage_runner import Built, StageResult, run_stage
from lookalike.core.graph import key_for
from lookalike.core.manifest import Manifest, atomic_path
from lookalike.core.names import AUTO
from lookalike.core.settings import IndexSettings
from lookalike.stages.dataset.stage import open_snapshot
from lookalike.stages.embeddings.shards import embedding_row_ids, iter_embeddings, load_embedding_rows, load_embeddings
from lookalike.stages.index.auto import choose_index
from lookalike.stages.index.factory import (
    INDEX_FILE,
    RECALL_K,
    ExactNeighbours,
    IndexBuildError,
    IndexType,
    adds_in_parts,
    apply_search_params,
    build_index,
    empty_index,
    plan_factory,
    prepare_vectors,
    recall_against,
    recall_vs_exact,
    resolve_index_type,
    sample_queries,
    search_params_for,
    self_retrieval_at_1,
    train_index,
)
from lookalike.stages.index.factory import training_rows as index_sample
from lookalike.stages.index.metadata import build_metadata, write_metadata
from lookalike.stages.index.whitening import Whitening, fit_whitening, fit_whitening_sample
from lookalike.stages.index.whitening import training_rows as whitening_sample

STAGE = "index"


def index_key(section: IndexSettings, embeddings: Manifest) -> str:
    return key_for(STAGE, section.key_fields(), {"embeddings": embeddings.key})


def run_index_stage(section: IndexSettings, embeddings: Manifest, root: Path) -> StageResult:
    """Build, measure and write the index for a finished embeddings stage."""
    key = index_key(section, embeddings)

    def build(folder: Path) -> Built:
        return _build(section, embeddings, root, folder)

    return run_stage(
        root,
        STAGE,
        key,
        settings=section.model_dump(mode="json"),
        inputs={
            "embeddings": embeddings.key,
            "dataset": embeddings.inputs["dataset"],
            "encoder": embeddings.inputs["encoder"],
        },
        build=build,
    )


@dataclass
class _Indexed:
    """An index over whitened vectors and what its stats need."""

    index: faiss.Index
    whitening: Whitening
    kind: IndexType
    params: dict[str, int]
    row_ids: np.ndarray  # the rows indexed
    dim: int
    self_at_1: float
    recall: float
    n_queries: int
    auto: dict | None = None
    dedupe: dict | None = None


def _build(section: IndexSettings, embeddings: Manifest, root: Path, folder: Path) -> Built:
    started = time.perf_counter()
    # auto measures candidates on held-out vectors drawn from the whole collection, and dedupe drops
    # rows found by searching all of them: both still hold every vector (3-4x their size at peak)
    if section.type == AUTO or section.dedupe != "none":
        built = _index_in_memory(section, embeddings, root)
    else:
        built = _index_streamed(section, embeddings, root)
    index, whitening, kind, auto, dedupe = built.index, built.whitening, built.kind, built.auto, built.dedupe
    build_seconds = time.perf_counter() - started
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(whitening.wrap(index), str(tmp))
    stats = {
        "type": section.type,
        "chosen": auto["chosen"] if auto else section.type,
        "factory": kind.factory,
        "search_params": built.params,
        "metric": kind.metric,
        "normalized": kind.metric == "ip" or whitening.applied,  # whitened vectors are unit length: cosine ranking
        "exact": kind.exact,
        "ntotal": int(index.ntotal),
        "dim": built.dim,
        "whitening": whitening.stats(),
        "bytes": (folder / INDEX_FILE).stat().st_size,
        "self_retrieval_at_1": built.self_at_1,
        f"recall_at_{RECALL_K}": built.recall,
        "eval_queries": built.n_queries,
    }
    if auto:
        stats["auto"] = auto
    if dedupe:
        stats["dedupe"] = dedupe
    dataset = read_manifest(root, "dataset", embeddings.inputs["dataset"])
    metadata = build_metadata(open_snapshot(root, dataset), dataset)
    if dedupe:  # the rows indexed, not those dropped as duplicates
        metadata = metadata.filter(np.isin(metadata.column("row").to_numpy(), built.row_ids))
    stats["metadata_columns"] = metadata.column_names
    files = [INDEX_FILE, write_metadata(metadata, folder)]
    return Built(files=files, stats=stats, timings={"faiss_build_seconds": build_seconds})


def _index_streamed(section: IndexSettings, embeddings: Manifest, root: Path) -> _Indexed:
    """The index of a non-auto type over every embedding, read one shard at a time: in memory at once
    are the index, one shard and the rows the whitening and the index train on and the stats query with.

    The same index, byte for byte, as `_index_in_memory` builds: those rows are read by position, in
    the order the whole collection has (so the whitening and the index are trained on the same vectors
    in the same order), each vector is prepared and whitened on its own either way, and the index types
    that `adds_in_parts` are filled a shard at a time; others (HNSW) get all the whitened vectors at once."""
    row_ids = embedding_row_ids(root, embeddings)
    n = len(row_ids)
    if n == 0:
        raise IndexBuildError("no vectors to index")
    kind = resolve_index_type(section.type)
    whitening_rows, training_rows, queries = whitening_sample(n), index_sample(n), sample_queries(n)
    wanted = np.union1d(np.union1d(whitening_rows, training_rows), queries)
    raw, _ = load_embedding_rows(root, embeddings, wanted)
    dim = int(raw.shape[1])
    prepared = prepare_vectors(raw, kind.metric)
    del raw
    whitening = fit_whitening_sample(prepared[np.searchsorted(wanted, whitening_rows)], n, section.whitening)
    query_vectors = whitening.apply(prepared[np.searchsorted(wanted, queries)])
    kind = plan_factory(kind, n, whitening.dim or dim, section.nlist, section.type)
    index = empty_index(whitening.dim or dim, kind)
    if not index.is_trained:
        train_index(index, whitening.apply(prepared[np.searchsorted(wanted, training_rows)]), n, kind)
    del prepared
    exact = None if kind.exact else ExactNeighbours(query_vectors, RECALL_K + 1, kind)
    in_parts = adds_in_parts(index)
    whole = None if in_parts else np.empty((n, whitening.dim or dim), np.float32)
    start = 0
    for shard, shard_ids in iter_embeddings(root, embeddings):
        vectors = whitening.apply(prepare_vectors(shard, kind.metric))
        if exact is not None:
            exact.add(vectors)
        if whole is None:
            index.add_with_ids(vectors, shard_ids.astype(np.int64))
        else:
            whole[start : start + len(vectors)] = vectors
        start += len(shard)
    if whole is not None:
        index.add_with_ids(whole, row_ids.astype(np.int64))
        del whole
    params = search_params_for(index, section.nprobe, section.ef_search, section.refine_k_factor)
    apply_search_params(index, params)
    self_at_1 = self_retrieval_at_1(index, query_vectors, row_ids[queries])
    recall = (
        1.0
        if exact is None
        else recall_against(index, query_vectors, row_ids[queries], exact.row_ids(row_ids), RECALL_K)
    )
    return _Indexed(index, whitening, kind, params, row_ids, dim, self_at_1, recall, len(queries))


def _index_in_memory(section: IndexSettings, embeddings: Manifest, root: Path) -> _Indexed:
    """The index over every embedding held in memory at once (raw, prepared and whitened copies)."""
    raw, row_ids = load_embeddings(root, embeddings)
    if len(raw) == 0:
        raise IndexBuildError("no vectors to index")
    dedupe = None
    if section.dedupe != "none":
        raw, row_ids, dedupe = _one_per_group(section, embeddings, root, raw, row_ids)
    auto = None
    # the index is built over whitened vectors and written behind the whitening, so it takes raw ones
    kind = None if section.type == AUTO else resolve_index_type(section.type)
    prepared = prepare_vectors(raw, kind.metric if kind else "l2")
    whitening = fit_whitening(prepared, section.whitening)
    vectors = whitening.apply(prepared)
    del prepared
    if kind is None:
        choice = choose_index(vectors, row_ids, section)
        kind, index, params, auto = choice.kind, choice.index, choice.search_params, choice.report
    else:
        kind = plan_factory(kind, len(vectors), vectors.shape[1], section.nlist, section.type)
        index = build_index(vectors, row_ids, kind)
        params = search_params_for(index, section.nprobe, section.ef_search, section.refine_k_factor)
    apply_search_params(index, params)
    queries = sample_queries(len(vectors))
    self_at_1 = self_retrieval_at_1(index, vectors[queries], row_ids[queries])
    recall = 1.0 if kind.exact else recall_vs_exact(index, vectors, row_ids, queries, kind, RECALL_K)
    dim = int(raw.shape[1])
    return _Indexed(index, whitening, kind, params, row_ids, dim, self_at_1, recall, len(queries), auto, dedupe)


def _one_per_group(section: IndexSettings, embeddings: Manifest, root: Path, raw, row_ids):
    """(vectors, row ids, stats) with all but the lowest row id of each duplicate group dropped:
    groups of byte-identical images (same sha256) for `exact`; for `near`, also the near-duplicate
    groups `lookalike.stages.duplicates` finds in an exact index of all the vectors, at the threshold
    it calibrates on augmented copies of the collection's images."""
    from lookalike.stages.duplicates import exact_groups

    snapshot = open_snapshot(root, read_manifest(root, "dataset", embeddings.inputs["dataset"]))
    groups = exact_groups(snapshot)
    stats = {"mode": section.dedupe}
    if section.dedupe == "near":
        groups, calibration = _near_groups(section, embeddings, root, raw, row_ids, snapshot, groups)
        stats.update({"threshold": calibration.threshold, "threshold_why": calibration.why})
    dropped = np.asarray(sorted(r for g in groups for r in g[1:]), dtype=np.int64)
    keep = ~np.isin(row_ids, dropped)
    kind = "byte-identical" if section.dedupe == "exact" else "byte-identical or near-duplicate"
    stats.update(
        {
            "n_groups": len(groups),
            "n_dropped": int((~keep).sum()),
            "why": f"{len(groups)} groups of {kind} images: each indexed once, as its lowest row id",
        }
    )
    return raw[keep], row_ids[keep], stats


def _near_groups(section: IndexSettings, embeddings: Manifest, root: Path, raw, row_ids, snapshot, exact):
    from lookalike.stages.duplicates import calibrate_threshold, near_groups
    from lookalike.stages.inference import Embedder

    metric = "l2" if section.type == AUTO else resolve_index_type(section.type).metric
    prepared = prepare_vectors(raw, metric)
    whitening = fit_whitening(prepared, section.whitening)
    everything = whitening.wrap(build_index(whitening.apply(prepared), row_ids, IndexType("Flat", metric, True)))
    encoder = read_manifest(root, "encoder", embeddings.inputs["encoder"])
    embedder = Embedder(root, encoder, channels_last=embeddings.settings.get("channels_last", True))
    calibration = calibrate_threshold(embedder, snapshot, everything, metric)
    groups = near_groups(everything, prepared, row_ids, calibration.threshold, metric, exact, linkage="leader")
    return groups, calibration
