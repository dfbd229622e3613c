"""Which FAISS operations each index type is given, decided from its type (lookalike.stages.index.capabilities)."""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.stages.index.capabilities import capabilities
from lookalike.stages.index.factory import PRESETS, plan_factory, resolve_index_type, search, trained_index
from lookalike.stages.index.whitening import fit_whitening

PAGE = Path(__file__).resolve().parents[2] / "docs" / "concepts" / "index-types.md"  # the presets' table
# index type -> (range search, filtered search)
EXPECTED = {
    "flat-l2": (True, True),
    "flat-ip": (True, True),
    "hnsw": (False, True),  # its range search aborts the process (issue 44)
    "sq8": (True, True),
    "sq-fp16": (True, True),
    "ivf-flat": (True, True),
    "ivf-sq8": (True, True),
    "ivf-pq": (True, True),
    "ivf-pqfs-rflat": (True, True),
    "PCA8,Flat": (True, True),  # a transform inside the id map
    "ip:IVF8,PQ8x4fs,RFlat": (False, True),  # the refine's range search misses every pair for a similarity
    "HNSW16_PQ4x4": (False, True),
    "PQ8x4": (True, False),
    "PQ8x4fs": (False, False),
    "NSG16,Flat": (False, False),
    "LSH": (False, False),
}


def written(name: str, vectors: np.ndarray) -> faiss.Index:
    """The index of type `name` as the index stage writes it: trained, ids mapped, behind the whitening."""
    kind = resolve_index_type(name)
    kind = plan_factory(kind, *vectors.shape, preset=name)
    whitening = fit_whitening(vectors, 0.5)
    return whitening.wrap(trained_index(whitening.apply(vectors), kind))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((700, 16)).astype(np.float32)


@pytest.mark.parametrize("name", EXPECTED)
def test_each_index_type_is_given_the_operations_faiss_runs_safely_for_it(vectors, name):
    found = capabilities(written(name, vectors))
    assert (found.range_search, found.filtered_search) == EXPECTED[name]


def test_the_readme_table_says_what_each_preset_is_given(vectors):
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"`[a-z0-9-]+`", cells[0]) and cells[0].strip("`") in PRESETS:
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(PRESETS)
    for name, (_, factory, _, pairs, filtered) in rows.items():
        found = capabilities(written(name, vectors))
        assert factory == f"`{PRESETS[name].factory}`"
        assert pairs == ("range search" if found.range_search else "20 nearest, cut at the threshold"), name
        assert filtered == ("ID selector" if found.filtered_search else "over-fetch"), name


@pytest.mark.parametrize("name", ["PQ8x4fs", "NSG16,Flat", "HNSW16_PQ4x4"])
def test_a_filter_on_a_type_without_selectors_returns_the_first_k_matching_rows_of_its_own_ranking(vectors, name):
    index = written(name, vectors)
    index.add_with_ids(vectors, np.arange(700, dtype=np.int64) * 3)
    if name.startswith("HNSW"):
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", 700)  # the walk reaches every row
    allowed = np.arange(0, 30, dtype=np.int64) * 3  # 30 of 700 rows: under EXACT_BELOW, so HNSW scans its storage
    distances, ids = search(index, vectors[:20], 5, allowed)
    assert (np.isin(ids, allowed)).all() and np.all(np.diff(distances, axis=1) >= 0)
    if not name.startswith("HNSW"):  # the plain search's full ranking, restricted to the allowed rows
        full_d, full = index.search(vectors[:20], 700)
        for got, d, ranking in zip(distances, full_d, full):
            assert np.allclose(got, d[np.isin(ranking, allowed)][:5], rtol=1e-5)
