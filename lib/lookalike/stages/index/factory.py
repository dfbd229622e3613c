"""The `index` stage: a FAISS index built from a factory string, ids = dataset row ids.

Index types are named presets over FAISS factory strings (`PRESETS`), `auto` (chosen for
a memory budget and a recall target, see `lookalike.stages.index.auto`), or a raw factory string for
experts (prefix `ip:` for inner-product metric, e.g. `ip:HNSW32`). Searches return row
ids, never positions. IVF presets choose their number of lists from N (FAISS guidance:
4·√N to 16·√N lists, at least 39 training points per centroid) and train on a seeded
sample. Search-time knobs (`nprobe`, `efSearch`, the refine `k_factor`) are recorded in
the manifest and applied whenever the index is loaded. Stats include self-retrieval@1 and recall@k against
exact search on a sample of the stored vectors, each query's own row left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from lookalike.core.errors import LookalikeError
from lookalike.core.manifest import Manifest, verified_path
from lookalike.core.names import INDEX_PRESETS, split_metric
from lookalike.stages.index.capabilities import capabilities
from lookalike.stages.sampling import seeded_sample

INDEX_FILE = "index.faiss"
EVAL_QUERIES = 10_000
RECALL_K = 10
POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per centroid
MIN_LISTS = 4
TRAIN_SAMPLE = 100_000  # IVF/PQ train on at most this many vectors (seeded sample)
# A filter matching at most this fraction of the rows is answered by scanning them all with the
# selector, not by walking an approximate index: on 60k Fashion-MNIST vectors the walk came back
# short for 76-88% of queries at 0.1-10% selectivity, and the scan cost less than walk + retry
# (benchmarks/README.md, "Filtered search").
EXACT_BELOW = 0.1


@dataclass(frozen=True)
class IndexType:
    factory: str  # presets may hold {nlist}, {m}, {nbits}: filled from N and dim by `plan_factory`
    metric: str  # "l2" or "ip" (inner product on L2-normalised vectors = cosine)
    exact: bool

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2


PRESETS: dict[str, IndexType] = {
    name: IndexType(spec.factory, spec.metric, spec.exact) for name, spec in INDEX_PRESETS.items()
}


class IndexBuildError(LookalikeError, ValueError):
    """The index cannot be built from these vectors with this type; says why."""


def resolve_index_type(name: str) -> IndexType:
    if name in PRESETS:
        return PRESETS[name]
    metric, factory = split_metric(name)
    return IndexType(factory, metric, exact=factory.strip() == "Flat")


def choose_nlist(n: int, preset: str = "ivf-flat") -> int:
    """IVF lists for N vectors: 4·√N, capped so every centroid trains on >= 39 points."""
    nlist = min(int(4 * math.sqrt(n)), n // POINTS_PER_CENTROID)
    if nlist < MIN_LISTS:
        raise IndexBuildError(
            f"{preset} needs at least {MIN_LISTS * POINTS_PER_CENTROID} vectors "
            f"({POINTS_PER_CENTROID} per list x {MIN_LISTS} lists), got {n}; "
            "use flat-l2, flat-ip or hnsw for a collection this small"
        )
    return nlist


def choose_pq(n: int, dim: int, dims_per_code: int = 4) -> tuple[int, int]:
    """(sub-quantizers m, bits each) for PQ: m = the largest divisor of dim <= dim/4 (a 16x
    smaller code than float32 at 8 bits), bits = 8 unless N is too small to train 256
    centroids per sub-quantizer with 39 points each."""
    m = max(d for d in range(1, max(1, dim // dims_per_code) + 1) if dim % d == 0)
    nbits = min(8, int(math.log2(max(1, n // POINTS_PER_CENTROID))))
    if nbits < 4:
        raise IndexBuildError(
            f"ivf-pq needs at least {16 * POINTS_PER_CENTROID} vectors to train its codebooks, got {n}; "
            "use flat-l2, sq8 or hnsw for a collection this small"
        )
    return m, nbits


def plan_factory(kind: IndexType, n: int, dim: int, nlist: int | None = None, preset: str = "") -> IndexType:
    """`kind` made concrete for N vectors of `dim` (factory placeholders filled)."""
    fields: dict[str, int] = {}
    if "{nlist}" in kind.factory:
        fields["nlist"] = nlist or choose_nlist(n, preset or kind.factory)
        if fields["nlist"] > n:
            raise IndexBuildError(f"index.nlist={fields['nlist']} is more lists than vectors ({n}); lower it")
    if "{m}" in kind.factory:
        fields["m"], fields["nbits"] = choose_pq(n, dim)
    return IndexType(kind.factory.format(**fields), kind.metric, kind.exact)


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, L2-normalised for the inner-product metric (cosine)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "ip":
        faiss.normalize_L2(out)
    return out


def build_index(vectors: np.ndarray, row_ids: np.ndarray, kind: IndexType) -> faiss.Index:
    """Train (on a seeded sample of at most TRAIN_SAMPLE vectors) and fill an index whose
    ids are `row_ids`; `kind.factory` must be concrete (see `plan_factory`)."""
    index = trained_index(vectors, kind)
    index.add_with_ids(vectors, row_ids.astype(np.int64))
    return index


def trained_index(vectors: np.ndarray, kind: IndexType) -> faiss.Index:
    """An empty index of `kind` that takes row ids, trained on (a sample of) `vectors`."""
    n, dim = vectors.shape
    index = empty_index(dim, kind)
    if not index.is_trained:
        train_index(index, vectors if n <= TRAIN_SAMPLE else vectors[training_rows(n)], n, kind)
    return index


def training_rows(n: int) -> np.ndarray:
    """Positions (sorted) of the vectors an index of `n` vectors is trained on: a seeded sample of at
    most TRAIN_SAMPLE, so a caller can read just those rows of a collection too large to hold."""
    return seeded_sample(n, TRAIN_SAMPLE)


def empty_index(dim: int, kind: IndexType) -> faiss.Index:
    """An untrained, empty index of `kind` for `dim`-d vectors that takes row ids."""
    try:
        index = faiss.index_factory(dim, kind.factory, kind.faiss_metric)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot build {kind.factory!r} for dim {dim}: {_first_line(exc)}") from None
    return index if _stores_ids(index) else faiss.IndexIDMap2(index)


def train_index(index: faiss.Index, sample: np.ndarray, n: int, kind: IndexType) -> None:
    """Train `index` (of `n` vectors) on their `training_rows(n)`, `sample`, in that order."""
    try:
        index.train(sample)
    except RuntimeError as exc:
        raise IndexBuildError(
            f"index {kind.factory!r} cannot be trained on {n} vectors ({_first_line(exc)}); "
            "index more images or use a preset that needs no training (flat-l2, flat-ip, hnsw)"
        ) from None


def adds_in_parts(index: faiss.Index) -> bool:
    """Whether adding vectors to `index` a part at a time gives the same index as adding them at once:
    true where each vector is encoded and appended on its own (flat and scalar/product-quantizer codes,
    IVF lists, which FAISS itself fills in blocks, a refine pair of those); not for a graph (HNSW, NSG),
    whose construction orders a batch's vectors by level before linking them."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexIDMap2, faiss.IndexIDMap)):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexRefine):
        return adds_in_parts(index.base_index) and adds_in_parts(index.refine_index)
    return isinstance(index, (faiss.IndexFlatCodes, faiss.IndexIVF))


def _stores_ids(index: faiss.Index) -> bool:
    """IVF indexes keep the ids they are given (also under a pre-transform); a refine
    wrapper or any other index needs an IndexIDMap2 around it."""
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def search_params_for(index: faiss.Index, nprobe: int, ef_search: int, k_factor: int = 4) -> dict[str, int]:
    """The search-time knobs that apply to this index type, by their `faiss.ParameterSpace`
    names (none for flat/SQ indexes)."""
    params = {}
    ivf = _ivf(index)
    if ivf is not None:
        params["nprobe"] = min(nprobe, ivf.nlist)
    if _hnsw(index) is not None:
        params["efSearch"] = ef_search
    if isinstance(_unwrapped(index), faiss.IndexRefine):
        params["k_factor_rf"] = k_factor
    return params


def apply_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def _unwrapped(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def _hnsw(index: faiss.Index):
    inner = _unwrapped(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _first_line(exc: Exception) -> str:
    """FAISS errors carry C++ locations; keep the sentence a user can act on."""
    text = " ".join(str(exc).split())
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


def _ivf(index: faiss.Index):
    """The IVF index inside `index`, or None when it is not one."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def sample_queries(n: int) -> np.ndarray:
    """Positions of the stored vectors used as queries: all of them, or a seeded 10k sample."""
    return seeded_sample(n, EVAL_QUERIES)


def search(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, row ids), each (n_queries, k); missing neighbours have id -1.

    With `allowed` (row ids), only those rows can be returned: FAISS's own ID selector is
    passed down through the whitening, the id map and the index type's search parameters
    (`filtered_params`), so the search skips other rows as it goes instead of over-fetching
    and dropping. An approximate index can still come back short when few of the lists or
    graph nodes it visits match (a selective filter); those queries are searched again
    exhaustively (every IVF list; an HNSW index's own vector storage, scanned with the selector),
    so a filtered search returns k hits whenever k rows match. A filter matching at most
    `EXACT_BELOW` of the rows goes to that exhaustive search at once. An index type that takes no
    selector (`lookalike.stages.index.capabilities`: PQ without IVF, NSG, LSH, ...) is asked for more
    neighbours instead, until k of them match (`_overfetched`).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is None:
        return index.search(queries, min(k, index.ntotal))
    allowed = np.unique(np.asarray(allowed, dtype=np.int64))
    k = min(k, len(allowed))
    if k == 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    if not capabilities(index).filtered_search:
        return _overfetched(index.search, index.ntotal, queries, k, allowed, _similarity(index))
    knobs = current_knobs(index)
    exhaustive = _exhaustive_search(index, knobs)
    if exhaustive is not None and len(allowed) <= EXACT_BELOW * index.ntotal:
        return exhaustive(queries, k, allowed)
    params, _keep = filtered_params(index, allowed, knobs)
    distances, ids = index.search(queries, k, params=params)
    short = (ids < 0).any(axis=1)
    if short.any() and exhaustive is not None:
        distances[short], ids[short] = exhaustive(queries[short], k, allowed)
    return distances, ids


def subset_index(index: faiss.Index, allowed: np.ndarray) -> faiss.Index | None:
    """An index of the rows `allowed` (row ids) of `index` alone, behind the same transforms (the whitening),
    as the index would be had it held only those rows: an exact copy of their vectors for a flat index (so
    `search(subset, q, k)` ranks as `search(index, q, k, allowed)` does); for an IVF index the same coarse
    quantizer and codes with only those rows' entries in its lists, searched with its own nprobe. None for
    any other index type: use `search(..., allowed)`.

    FAISS's ID selector on a flat index checks every stored vector per query, without BLAS: 10,000
    queries restricted to 50,000 of 100,000 random 128-d vectors took 36 s, a flat copy of the 50,000
    3.4 s (2 shared CPU cores); at 1M stored vectors the selector's cost grows tenfold, the copy's not. A
    filtered IVF search that few rows match falls back to scanning every list (`search`): the evaluation's
    50,000 of 1,000,000 rows, 10,000 queries, took most of its 309 s with an IVF4000,SQ8 index.
    """
    transforms = []
    node = faiss.downcast_index(index)
    while isinstance(node, faiss.IndexPreTransform):
        transforms += [faiss.downcast_VectorTransform(node.chain.at(i)) for i in range(node.chain.size())]
        node = faiss.downcast_index(node.index)
    allowed = np.asarray(allowed, dtype=np.int64)
    if isinstance(node, faiss.IndexIVF):
        subset = _ivf_subset(node, allowed)
    elif isinstance(node, faiss.IndexIDMap2) and type(faiss.downcast_index(node.index)) in (
        faiss.IndexFlat,
        faiss.IndexFlatL2,
        faiss.IndexFlatIP,
    ):
        flat = faiss.downcast_index(node.index)
        id_map = faiss.vector_to_array(node.id_map)
        positions = np.flatnonzero(np.isin(id_map, allowed))
        subset = faiss.IndexIDMap2(faiss.IndexFlat(flat.d, flat.metric_type))
        if len(positions):
            subset.add_with_ids(flat.reconstruct_batch(positions.astype(np.int64)), id_map[positions])
    else:
        return None
    if not transforms:
        return subset
    wrapped = faiss.IndexPreTransform(subset)
    for transform in reversed(transforms):
        wrapped.prepend_transform(transform)
    wrapped.referenced_objects = [index, subset]  # the transforms belong to `index`: it must outlive this
    return wrapped


def _ivf_subset(ivf: faiss.IndexIVF, allowed: np.ndarray) -> faiss.IndexIVF:
    """A copy of `ivf` (quantizer, codec, nprobe) whose lists hold only the entries of the row ids `allowed`,
    each with the code `ivf` stores for it: cloned while `ivf` holds empty lists, so its own lists are never
    copied whole."""
    full, owned, ntotal = ivf.invlists, ivf.own_invlists, ivf.ntotal
    ivf.own_invlists = False  # replace_invlists deletes the lists an index owns
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(empty, False)
    ivf.ntotal = 0
    try:
        subset = faiss.clone_index(ivf)  # already its own type; a downcast proxy would not own it
    finally:
        ivf.replace_invlists(full, owned)
        ivf.ntotal = ntotal
    wanted = np.zeros(int(max(allowed.max(initial=-1), 0)) + 1, dtype=bool)
    wanted[allowed[allowed >= 0]] = True
    size, kept = ivf.code_size, 0
    for number in range(ivf.nlist):
        n = full.list_size(number)
        if n == 0:
            continue
        ids = faiss.rev_swig_ptr(full.get_ids(number), n).copy()
        keep = np.flatnonzero((ids < len(wanted)) & wanted[np.minimum(ids, len(wanted) - 1)])
        if len(keep) == 0:
            continue
        # held in names for the call: swig_ptr keeps no reference to the array it points into
        kept_ids = np.ascontiguousarray(ids[keep])
        codes = np.ascontiguousarray(faiss.rev_swig_ptr(full.get_codes(number), n * size).reshape(n, size)[keep])
        subset.invlists.add_entries(number, len(keep), faiss.swig_ptr(kept_ids), faiss.swig_ptr(codes))
        kept += len(keep)
    subset.ntotal = kept
    return subset


def _exhaustive_search(index: faiss.Index, knobs: dict[str, int]):
    """search(queries, k, allowed) visiting every stored vector of an approximate index (every IVF
    list; an HNSW index's vector storage), or None for an index that always does."""
    if _hnsw(_inner(index)) is not None:
        return lambda queries, k, allowed: _hnsw_storage_search(index, queries, k, allowed)
    ivf = _ivf(index)
    if ivf is not None and knobs.get("nprobe", ivf.nlist) < ivf.nlist:

        def every_list(queries: np.ndarray, k: int, allowed: np.ndarray):
            params, _keep = filtered_params(index, allowed, {**knobs, "nprobe": ivf.nlist})
            return index.search(queries, k, params=params)

        return every_list
    return None


def _hnsw_storage_search(index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray):
    """Exact search among the allowed rows of an HNSW index: its vector storage scanned with the
    selector. A graph walk cannot be made exhaustive cheaply (a beam as wide as the index costs
    ~100x a scan); FAISS skips unselected vectors before computing their distances, so this costs
    about one distance per matching row."""
    node = faiss.downcast_index(index)
    while isinstance(node, faiss.IndexPreTransform):  # the whitening, applied as the index would
        for i in range(node.chain.size()):
            queries = faiss.downcast_VectorTransform(node.chain.at(i)).apply(queries)
        node = faiss.downcast_index(node.index)
    storage = faiss.downcast_index(faiss.downcast_index(node.index).storage)
    id_map = faiss.vector_to_array(node.id_map)  # HNSW always sits in an IndexIDMap2 here
    queries = np.ascontiguousarray(queries)
    if capabilities(storage).filtered_search:
        selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorTranslated(node.id_map, selector)
        distances, positions = storage.search(queries, k, params=params)
    else:  # PQ codes (HNSW32_PQ16) take no selector: over-fetch among the positions of the allowed rows
        wanted = np.flatnonzero(np.isin(id_map, allowed))
        distances, positions = _overfetched(storage.search, storage.ntotal, queries, k, wanted, _similarity(storage))
    return distances, np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1)


def _overfetched(search_k, ntotal: int, queries: np.ndarray, k: int, allowed: np.ndarray, similarity: bool):
    """search(queries, k, allowed) through a plain `search_k(queries, n)` that takes no selector: n starts
    at twice what the filter's share of rows suggests and grows 4x for the queries still short of k
    matches, until every stored vector has been returned. Missing hits are id -1, as FAISS pads them."""
    distances = np.full((len(queries), k), -np.inf if similarity else np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    todo = np.arange(len(queries))
    n = min(ntotal, max(4 * k, -(-2 * k * ntotal // max(1, len(allowed)))))
    while len(todo):
        found_d, found = search_k(queries[todo], n)
        matches = (found >= 0) & np.isin(found, allowed)
        short = []
        for q, d, f, match in zip(todo, found_d, found, matches):
            hits = np.flatnonzero(match)[:k]
            if len(hits) < k and n < ntotal:
                short.append(q)
                continue
            distances[q, : len(hits)], ids[q, : len(hits)] = d[hits], f[hits]
        todo, n = np.asarray(short, dtype=np.int64), min(ntotal, 4 * n)
    return distances, ids


def _similarity(index: faiss.Index) -> bool:
    return index.metric_type == faiss.METRIC_INNER_PRODUCT


def filtered_params(index: faiss.Index, allowed: np.ndarray, knobs: dict[str, int]):
    """(search parameters restricting `index` to the row ids `allowed`, objects to keep alive).

    FAISS reads a selector from the parameters object of the index it reaches: the whitening's
    `IndexPreTransform` hands `index_params` on, an `IndexIDMap2` translates row ids to its
    positions (`IDSelectorTranslated`, built here so a refine stage below gets it too), and
    IVF, HNSW and refine indexes each take their own parameter class, which also carries the
    knobs the index was loaded with (they would otherwise reset to FAISS's defaults).
    """
    keep: list = []
    selector = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
    keep += [allowed, selector]
    return _params(index, selector, knobs, keep), keep


def _params(index: faiss.Index, selector, knobs: dict[str, int], keep: list):
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform()
        params.index_params = _params(index.index, selector, knobs, keep)
    elif isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        translated = faiss.IDSelectorTranslated(index.id_map, selector)
        keep.append(translated)
        params = _params(index.index, translated, knobs, keep)
    elif isinstance(index, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = knobs.get("k_factor_rf", index.k_factor)
        params.base_index_params = _params(index.base_index, selector, knobs, keep)
        params.sel = selector
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = knobs.get("nprobe", index.nprobe)
        params.sel = selector
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = knobs.get("efSearch", index.hnsw.efSearch)
        params.sel = selector
    else:
        params = faiss.SearchParameters()
        params.sel = selector
    keep.append(params)
    return params


def current_knobs(index: faiss.Index) -> dict[str, int]:
    """The search knobs set on a loaded index, by their `ParameterSpace` names."""
    knobs = {}
    ivf = _ivf(index)
    if ivf is not None:
        knobs["nprobe"] = ivf.nprobe
    hnsw = _hnsw(_inner(index))
    if hnsw is not None:
        knobs["efSearch"] = hnsw.hnsw.efSearch
    refine = _unwrapped(_inner(index))
    if isinstance(refine, faiss.IndexRefine):
        knobs["k_factor_rf"] = int(refine.k_factor)
    return knobs


def _inner(index: faiss.Index) -> faiss.Index:
    """`index` without the whitening in front of it."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


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
    """Mean overlap of the index's top-k neighbours with exact search's, each query's own
    row left out of both (so a query finding itself cannot inflate the figure)."""
    exact = faiss.IndexIDMap2(faiss.IndexFlat(vectors.shape[1], kind.faiss_metric))
    exact.add_with_ids(vectors, row_ids)
    _, truth = search(exact, vectors[queries], k + 1)
    return recall_against(index, vectors[queries], row_ids[queries], truth, k)


class ExactNeighbours:
    """The exact k nearest stored vectors of fixed `queries`, from the stored vectors given a part at a
    time (`add`, in storage order): `recall_vs_exact`'s ground truth without holding every vector.

    Each part is searched exactly and the parts' results merged in one FAISS heap keyed by position in
    the whole collection; FAISS keeps the lowest positions among tied distances both inside a search and
    in the merge, so the neighbours and their order are those of one exact index over all the vectors."""

    def __init__(self, queries: np.ndarray, k: int, kind: IndexType) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.metric = k, kind.faiss_metric
        self.keep_max = kind.metric == "ip"  # similarities: the largest are the nearest
        self.heap = faiss.ResultHeap(len(queries), k, keep_max=self.keep_max)
        self.stored = 0

    def add(self, vectors: np.ndarray) -> None:
        flat = faiss.IndexFlat(vectors.shape[1], self.metric)
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        distances, positions = flat.search(self.queries, self.k)
        # the heap admits a candidate only when strictly better than its worst, so ties must reach it
        # lowest position first (FAISS lists the ties of an inner-product search highest first)
        order = np.lexsort((positions, -distances if self.keep_max else distances))
        distances, positions = np.take_along_axis(distances, order, 1), np.take_along_axis(positions, order, 1)
        self.heap.add_result(distances, np.where(positions >= 0, positions + self.stored, -1))
        self.stored += len(vectors)

    def row_ids(self, row_ids: np.ndarray) -> np.ndarray:
        """(n_queries, k) row ids of the neighbours, nearest first (-1 where fewer were stored)."""
        self.heap.finalize()
        found = self.heap.I
        return np.where(found >= 0, row_ids[np.maximum(found, 0)], -1)


def recall_against(index, queries: np.ndarray, query_ids: np.ndarray, truth: np.ndarray, k: int) -> float:
    """`recall_vs_exact` from exact search's k + 1 neighbours of the queries, `truth` (row ids)."""
    _, got = search(index, queries, k + 1)
    overlap = []
    for own, t, g in zip(query_ids, truth, got):
        t = [r for r in t if r != own and r >= 0][:k]
        g = {r for r in g if r != own and r >= 0}
        if t:
            overlap.append(len(g.intersection(t)) / len(t))
    return round(float(np.mean(overlap)), 6) if overlap else 1.0


def load_index(root: Path, manifest: Manifest) -> faiss.Index:
    """Read a finished index after verifying its sha256, with its recorded search knobs."""
    index = faiss.read_index(str(verified_path(root, manifest, INDEX_FILE)))
    apply_search_params(index, manifest.stats.get("search_params", {}))
    return index
