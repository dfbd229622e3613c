"""The `index` stage: a FAISS index built from a factory string, ids = dataset row ids.

Index types are named presets over FAISS factory strings (`PRESETS`), or a raw factory
string for experts (prefix `ip:` for inner-product metric, e.g. `ip:HNSW32`). Searches
return row ids, never positions. Stats include self-retrieval@1 and recall@k against
exact search, measured on a sample of the stored vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from lib.config import IndexSettings
from lib.embedding import load_embeddings
from lib.errors import LookalikeError
from lib.manifest import Manifest, atomic_path, stage_key, verified_path
from lib.stages import Built, StageResult, run_stage

STAGE = "index"
CODE_VERSION = 1
INDEX_FILE = "index.faiss"
EVAL_QUERIES = 10_000
RECALL_K = 10


@dataclass(frozen=True)
class IndexType:
    factory: str
    metric: str  # "l2" or "ip" (inner product on L2-normalised vectors = cosine)
    exact: bool

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2


PRESETS: dict[str, IndexType] = {
    "flat-l2": IndexType("Flat", "l2", exact=True),  # the article's IndexFlatL2
    "flat-ip": IndexType("Flat", "ip", exact=True),
    "hnsw": IndexType("HNSW32", "l2", exact=False),
    "sq8": IndexType("SQ8", "l2", exact=False),
    "sq-fp16": IndexType("SQfp16", "l2", exact=False),
}


class IndexBuildError(LookalikeError, ValueError):
    """The index cannot be built from these vectors with this type; says why."""


def resolve_index_type(name: str) -> IndexType:
    if name in PRESETS:
        return PRESETS[name]
    metric, _, factory = name.rpartition(":")
    if metric not in ("", "ip", "l2"):
        raise ValueError(f"unknown metric prefix {metric!r} in {name!r}; use ip: or l2:")
    return IndexType(factory, metric or "l2", exact=factory.strip() == "Flat")


def check_index_type(name: str) -> str:
    """Validate a preset name or a raw factory string (for settings)."""
    kind = resolve_index_type(name)
    if name in PRESETS:
        return name
    try:
        faiss.index_factory(512, kind.factory, kind.faiss_metric)
    except RuntimeError:
        raise ValueError(
            f"unknown index type {name!r}: not a preset ({', '.join(PRESETS)}) "
            "and not a FAISS factory string that FAISS accepts"
        ) from None
    return name


def index_key(section: IndexSettings, embeddings: Manifest) -> str:
    return stage_key(STAGE, section.key_fields(), {"embeddings": embeddings.key}, CODE_VERSION)


def run_index_stage(section: IndexSettings, embeddings: Manifest, root: Path) -> StageResult:
    """Build, measure and write the index for a finished embeddings stage."""
    key = index_key(section, embeddings)

    def build(folder: Path) -> Built:
        return _build(section, embeddings, root, folder)

    return run_stage(
        root, STAGE, key, code_version=CODE_VERSION, settings=section.model_dump(mode="json"),
        inputs={"embeddings": embeddings.key, "dataset": embeddings.inputs["dataset"],
                "encoder": embeddings.inputs["encoder"]},
        build=build,
    )


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, L2-normalised for the inner-product metric (cosine)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "ip":
        faiss.normalize_L2(out)
    return out


def build_index(vectors: np.ndarray, row_ids: np.ndarray, kind: IndexType) -> faiss.Index:
    n, dim = vectors.shape
    try:
        index = faiss.index_factory(dim, kind.factory, kind.faiss_metric)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot build {kind.factory!r} for dim {dim}: {_first_line(exc)}") from None
    if not _supports_ids(index):
        index = faiss.IndexIDMap2(index)
    if not index.is_trained:
        try:
            index.train(vectors)
        except RuntimeError as exc:
            raise IndexBuildError(
                f"index {kind.factory!r} cannot be trained on {n} vectors ({_first_line(exc)}); "
                "index more images or use a preset that needs no training (flat-l2, flat-ip, hnsw)"
            ) from None
    index.add_with_ids(vectors, row_ids.astype(np.int64))
    return index


def _first_line(exc: Exception) -> str:
    """FAISS errors carry C++ locations; keep the sentence a user can act on."""
    text = " ".join(str(exc).split())
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


def _supports_ids(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _build(section: IndexSettings, embeddings: Manifest, root: Path, folder: Path) -> Built:
    kind = resolve_index_type(section.type)
    raw, row_ids = load_embeddings(root, embeddings)
    if len(raw) == 0:
        raise IndexBuildError("no vectors to index")
    vectors = prepare_vectors(raw, kind.metric)
    started = time.perf_counter()
    index = build_index(vectors, row_ids, kind)
    build_seconds = time.perf_counter() - started
    with atomic_path(folder / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
    queries = sample_queries(len(vectors))
    self_at_1 = self_retrieval_at_1(index, vectors[queries], row_ids[queries])
    recall = 1.0 if kind.exact else recall_vs_exact(index, vectors, row_ids, queries, kind, RECALL_K)
    stats = {
        "type": section.type,
        "factory": kind.factory,
        "metric": kind.metric,
        "normalized": kind.metric == "ip",
        "exact": kind.exact,
        "ntotal": int(index.ntotal),
        "dim": int(vectors.shape[1]),
        "bytes": (folder / INDEX_FILE).stat().st_size,
        "self_retrieval_at_1": self_at_1,
        f"recall_at_{RECALL_K}": recall,
        "eval_queries": len(queries),
    }
    return Built(files=[INDEX_FILE], stats=stats, timings={"faiss_build_seconds": build_seconds})


def sample_queries(n: int) -> np.ndarray:
    """Positions of the stored vectors used as queries: all of them, or a seeded 10k sample."""
    if n <= EVAL_QUERIES:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, EVAL_QUERIES, replace=False))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, row ids), each (n_queries, k); missing neighbours have id -1."""
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))


def self_retrieval_at_1(index: faiss.Index, queries: np.ndarray, query_ids: np.ndarray, k: int = 10) -> float:
    """Fraction of stored vectors that find themselves first.

    Exact duplicates tie at the same distance, and FAISS orders ties arbitrarily, so a
    query counts as found when its own id is among the results tied with the first.
    """
    distances, ids = search(index, queries, k)
    tied = np.isclose(distances, distances[:, :1], rtol=1e-5, atol=1e-6)
    hits = ((ids == query_ids[:, None]) & tied).any(axis=1)
    return round(float(hits.mean()), 6)


def recall_vs_exact(index, vectors, row_ids, queries, kind: IndexType, k: int) -> float:
    """Mean overlap of the index's top-k with exact search's top-k."""
    exact = faiss.IndexIDMap2(faiss.IndexFlat(vectors.shape[1], kind.faiss_metric))
    exact.add_with_ids(vectors, row_ids)
    _, truth = search(exact, vectors[queries], k)
    _, got = search(index, vectors[queries], k)
    overlap = [len(set(t) & set(g)) / len(t) for t, g in zip(truth, got)]
    return round(float(np.mean(overlap)), 6)


def load_index(root: Path, manifest: Manifest) -> faiss.Index:
    """Read a finished index after verifying its sha256."""
    return faiss.read_index(str(verified_path(root, manifest, INDEX_FILE)))
