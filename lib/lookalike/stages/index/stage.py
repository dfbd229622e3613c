"""The `index` stage: a FAISS index over a finished embeddings stage, ids = dataset row ids.

What an index type means and how it is built, searched and measured is `lookalike.stages.index.factory`;
`index.type=auto` is chosen by `lookalike.stages.index.auto`; the vectors are whitened first
(`lookalike.stages.index.whitening`, inside the written index). This module keys the stage and writes
its folder: `index.faiss` with the search knobs and quality stats in the manifest, and `metadata.parquet`,
what is known about each row (`lookalike.stages.index.metadata`), for hits and filters.
"""

from __future__ import annotations

import time
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
from lookalike.stages.embeddings.shards import load_embeddings
from lookalike.stages.index.auto import choose_index
from lookalike.stages.index.factory import (
    INDEX_FILE,
    RECALL_K,
    IndexBuildError,
    apply_search_params,
    build_index,
    plan_factory,
    prepare_vectors,
    recall_vs_exact,
    resolve_index_type,
    sample_queries,
    search_params_for,
    self_retrieval_at_1,
)
from lookalike.stages.index.metadata import build_metadata, write_metadata
from lookalike.stages.index.whitening import fit_whitening

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


def _build(section: IndexSettings, embeddings: Manifest, root: Path, folder: Path) -> Built:
    raw, row_ids = load_embeddings(root, embeddings)
    if len(raw) == 0:
        raise IndexBuildError("no vectors to index")
    dedupe = None
    if section.dedupe != "none":
        raw, row_ids, dedupe = _one_per_group(section, embeddings, root, raw, row_ids)
    started = time.perf_counter()
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
    build_seconds = time.perf_counter() - started
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(whitening.wrap(index), str(tmp))
    queries = sample_queries(len(vectors))
    self_at_1 = self_retrieval_at_1(index, vectors[queries], row_ids[queries])
    recall = 1.0 if kind.exact else recall_vs_exact(index, vectors, row_ids, queries, kind, RECALL_K)
    stats = {
        "type": section.type,
        "chosen": auto["chosen"] if auto else section.type,
        "factory": kind.factory,
        "search_params": params,
        "metric": kind.metric,
        "normalized": kind.metric == "ip" or whitening.applied,  # whitened vectors are unit length: cosine ranking
        "exact": kind.exact,
        "ntotal": int(index.ntotal),
        "dim": int(raw.shape[1]),
        "whitening": whitening.stats(),
        "bytes": (folder / INDEX_FILE).stat().st_size,
        "self_retrieval_at_1": self_at_1,
        f"recall_at_{RECALL_K}": recall,
        "eval_queries": len(queries),
    }
    if auto:
        stats["auto"] = auto
    if dedupe:
        stats["dedupe"] = dedupe
    dataset = read_manifest(root, "dataset", embeddings.inputs["dataset"])
    metadata = build_metadata(open_snapshot(root, dataset), dataset)
    if dedupe:  # the rows indexed, not those dropped as duplicates
        metadata = metadata.filter(np.isin(metadata.column("row").to_numpy(), row_ids))
    stats["metadata_columns"] = metadata.column_names
    files = [INDEX_FILE, write_metadata(metadata, folder)]
    return Built(files=files, stats=stats, timings={"faiss_build_seconds": build_seconds})


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
    from lookalike.stages.index.factory import IndexType
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
