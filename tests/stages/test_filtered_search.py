"""Metadata beside the index and filtered search: every hit matches, and the hits are the exact
search restricted to the matching rows (ANN presets: their recall against it)."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike.core.filters import FilterError, parse_filter
from lookalike.core.manifest import verified_path
from lookalike.serving.query import Chain, Searcher
from lookalike.stages.index.metadata import METADATA_FILE

N = 600  # enough for ivf-flat's lists (>= 156 vectors)
SHARDS = 20  # the filter `shard=3` matches exactly 1/20 = 5% of the rows


@pytest.fixture(scope="module")
def labelled_parquet(tmp_path_factory) -> Path:
    """600 sample images as a parquet file with a path per image and a `shard` column (row % 20)
    and a `taken` date column, kept through dataset.metadata_columns."""
    import datetime

    sample = Path(__file__).parents[2] / "lib/lookalike/data/fashion-mnist-sample/data/train-00000-of-00001.parquet"
    table = pq.read_table(sample).slice(0, N)
    images = [
        {"bytes": item["bytes"], "path": f"/photos/{label}/img-{i:04d}.png"}
        for i, (item, label) in enumerate(zip(table.column("image").to_pylist(), table.column("label").to_pylist()))
    ]
    out = tmp_path_factory.mktemp("labelled") / "images.parquet"
    schema_meta = table.schema.metadata  # datasets' features: image and ClassLabel names
    table = pa.table(
        {
            "image": pa.array(images, table.schema.field("image").type),
            "label": table.column("label"),
            "shard": pa.array([i % SHARDS for i in range(N)], pa.int64()),
            "taken": pa.array([datetime.date(2020, 1, 1) + datetime.timedelta(days=i) for i in range(N)]),
        }
    )
    pq.write_table(table.replace_schema_metadata(schema_meta), out)
    return out


@pytest.fixture(scope="module")
def chains(labelled_parquet, tmp_path_factory) -> dict[str, tuple[Path, Chain]]:
    """One dataset → encoder (its starting point: a filter test needs vectors, not a good encoder)
    → embeddings chain, indexed by flat-l2, hnsw and ivf-flat through the index stage."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage
    from lookalike.stages.index.stage import run_index_stage

    root = tmp_path_factory.mktemp("filtered") / "artifacts"
    out = {}
    for kind in ("flat-l2", "hnsw", "ivf-flat"):
        settings = load_settings(
            {
                "dataset.source": str(labelled_parquet),
                "dataset.metadata_columns": "shard,taken",
                "encoder.steps": 0,
                "encoder.input_size": 16,
                "index.type": kind,
                "index.nprobe": 2,  # a few of ivf-flat's 15 lists, so a filter leaves some lists short
                "index.ef_search": 16,
                "artifacts_root": str(root),
            }
        )
        dataset = run_dataset_stage(settings.dataset, root).manifest
        encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
        embeddings = run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest
        index = run_index_stage(settings.index, embeddings, root).manifest
        out[kind] = (root, Chain(dataset, encoder, embeddings, index))
    return out


def _exact_among(root: Path, searcher: Searcher, vectors: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """Brute force over the allowed rows only, in the index's own (whitened) space."""
    from lookalike.stages.embeddings.shards import load_embeddings
    from lookalike.stages.index.factory import prepare_vectors

    raw, row_ids = load_embeddings(root, searcher.chain.embeddings)
    keep = np.isin(row_ids, allowed)
    index = searcher.index
    transform = faiss.downcast_index(index)
    chain = [faiss.downcast_VectorTransform(transform.chain.at(i)) for i in range(transform.chain.size())]

    def whiten(x):
        x = prepare_vectors(x, searcher.metric)
        for step in chain:
            x = step.apply(x)
        return x

    flat = faiss.IndexFlatL2(chain[-1].d_out)
    flat.add(whiten(raw[keep]))
    _, found = flat.search(whiten(vectors), k)
    return row_ids[keep][found]


@pytest.mark.parametrize("walk", [False, True], ids=["as-configured", "ann-walk-forced"])
@pytest.mark.parametrize("kind", ["flat-l2", "hnsw", "ivf-flat"])
def test_a_filter_matching_5_percent_returns_k_matching_hits_equal_to_exact_search_among_them(
    chains, kind, walk, monkeypatch
):
    """As configured, a 5% filter is answered by scanning the matching rows (factory.EXACT_BELOW);
    forced through the ANN walk, the queries it answers short are searched again, so k hits still come back."""
    if walk:
        if kind == "flat-l2":
            pytest.skip("an exact index has no walk")
        monkeypatch.setattr("lookalike.stages.index.factory.EXACT_BELOW", 0.0)
    root, chain = chains[kind]
    searcher = Searcher(root, chain)
    allowed = searcher.allowed_rows("shard=3")
    assert len(allowed) == N // SHARDS  # 5% of the rows

    from lookalike.stages.embeddings.shards import load_embeddings

    raw, row_ids = load_embeddings(root, chain.embeddings)
    queries = raw[::12]  # 50 queries, most of them outside the filter
    hits = searcher.search_vectors(queries, 10, where="shard=3")
    assert all(len(h) == 10 for h in hits)  # k matching rows exist, so k hits come back
    assert all(hit["shard"] == 3 for h in hits for hit in h)
    assert all(hit["row"] in set(allowed.tolist()) for h in hits for hit in h)
    assert all([hit["distance"] for hit in h] == sorted(hit["distance"] for hit in h) for h in hits)

    truth = _exact_among(root, searcher, queries, allowed, 10)
    got = [[hit["row"] for hit in h] for h in hits]
    recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))
    print(f"{kind}: recall@10 of the filtered search against exact search among the matching rows: {recall:.3f}")
    if not walk:
        assert recall == 1.0
    else:
        assert recall >= 0.8, recall  # benchmarks/filtered_search.py records it on real collections


@pytest.mark.parametrize("kind", ["flat-l2", "hnsw", "ivf-flat"])
def test_or_and_parentheses_select_the_union_and_the_id_selector_returns_only_those_rows(chains, kind):
    root, chain = chains[kind]
    searcher = Searcher(root, chain)
    first = searcher.metadata.table.column("label")[0].as_py()
    assert len(searcher.allowed_rows(f"label!='{first}' or label='{first}'")) == N  # was read as one != value
    where = "shard=3 or (shard>=18 and taken<2020-06-01)"
    rows = lambda text: set(searcher.allowed_rows(text).tolist())  # noqa: E731
    expected = rows("shard=3") | (rows("shard>=18") & rows("taken<2020-06-01"))
    assert rows(where) == expected and rows("shard<3") == rows("(shard=1) OR shard=0,2")

    from lookalike.stages.embeddings.shards import load_embeddings

    raw, _ = load_embeddings(root, chain.embeddings)
    queries = raw[::30]
    hits = searcher.search_vectors(queries, 10, where=where)
    assert all(len(h) == 10 and {hit["row"] for hit in h} <= expected for h in hits)
    truth = _exact_among(root, searcher, queries, np.array(sorted(expected)), 10)
    assert [[hit["row"] for hit in h] for h in hits] == truth.tolist()


def test_hits_carry_the_metadata_stored_beside_the_index(chains):
    root, chain = chains["flat-l2"]
    assert any(f.path == METADATA_FILE for f in chain.index.files)  # covered by the manifest's sha256
    table = pq.read_table(str(verified_path(root, chain.index, METADATA_FILE)))
    assert table.column_names == ["row", "label", "path", "split", "width", "height", "sha256", "shard", "taken"]
    hit = Searcher(root, chain).search_vectors(np.zeros((1, chain.index.stats["dim"]), np.float32), 1)[0][0]
    assert hit["path"].startswith("/photos/") and hit["split"] == "train" and (hit["width"], hit["height"]) == (28, 28)
    assert hit["label"] in chain.dataset.stats["label_names"]
    assert hit["taken"].startswith("20") and isinstance(hit["shard"], int)
    json.dumps(hit)  # dates come back as ISO text: every hit is JSON as it is


def test_filters_over_text_numbers_dates_and_globs(chains):
    root, chain = chains["flat-l2"]
    searcher = Searcher(root, chain)
    meta = searcher.metadata
    labels = meta.table.column("label").to_pylist()
    first = labels[0]
    assert len(searcher.allowed_rows(f'label="{first}"')) == labels.count(first)
    assert len(searcher.allowed_rows(f'label!="{first}"')) == N - labels.count(first)
    assert len(searcher.allowed_rows(["shard=1,2", "shard<2"])) == N // SHARDS  # terms and lists: shard 1 only
    assert len(searcher.allowed_rows("taken>=2020-03-01")) == N - 60  # 31 + 29 days (2020 is a leap year)
    assert len(searcher.allowed_rows("taken=2020-01-02,2020-01-03")) == 2
    assert len(searcher.allowed_rows("path~*/img-00??.png")) == 100
    assert len(searcher.allowed_rows("shard>=19 and width=28")) == N // SHARDS
    assert searcher.search_vectors(np.zeros((2, chain.index.stats["dim"]), np.float32), 5, "shard=99") == [[], []]
    for bad, says in [
        ("colour=red", "unknown filter field 'colour': this index has row, label, path"),
        ("label>=3", "compares numbers or dates, and label holds string"),
        ("shard=three", "shard holds numbers, and 'three' is not one"),
        ("shard~3*", "~ matches text, and shard holds int64"),
        ("label", "cannot read filter term 'label'"),
    ]:
        with pytest.raises(FilterError, match=says):
            searcher.allowed_rows(bad)


def test_parse_errors_name_the_term_and_the_syntax():
    assert str(parse_filter('label="T-shirt/top",Bag and width>=64')) == "label=T-shirt/top,Bag and width>=64"
    assert parse_filter(["a=1", "b!=2 and c~x*"]).fields == ["a", "b", "c"]
    with pytest.raises(FilterError, match=">= takes one value, got 2"):
        parse_filter("width>=1,2")
    with pytest.raises(FilterError, match="unclosed double quote"):
        parse_filter('label="Bag')
    with pytest.raises(FilterError, match="empty value"):
        parse_filter("label=")


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_a_subset_of_a_flat_index_ranks_its_rows_as_the_filtered_search_does(metric):
    """The evaluation's sample searched through a copy of those rows (BLAS) instead of FAISS's selector
    scan of every stored vector: the same ids and distances, behind the same whitening."""
    from lookalike.stages.index.factory import IndexType, build_index, prepare_vectors, search, subset_index
    from lookalike.stages.index.whitening import fit_whitening

    vectors = prepare_vectors(np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32), metric)
    row_ids = np.arange(400, dtype=np.int64) * 3 + 1  # ids are not positions
    whitening = fit_whitening(vectors, 0.5)
    assert whitening.applied
    index = whitening.wrap(build_index(whitening.apply(vectors), row_ids, IndexType("Flat", metric, True)))
    allowed = row_ids[::7]
    subset = subset_index(index, allowed)
    assert subset.ntotal == len(allowed)
    expected, got = search(index, vectors[:30], 10, allowed), search(subset, vectors[:30], 10)
    assert np.array_equal(got[1], expected[1]) and np.allclose(got[0], expected[0], atol=1e-5)
    hnsw = build_index(vectors, row_ids, IndexType("HNSW16", metric, False))
    assert subset_index(hnsw, allowed) is None  # a graph answers through its own filtered search


@pytest.mark.parametrize("factory", ["IVF8,SQ8", "IVF8,Flat"])
def test_a_subset_of_an_ivf_index_holds_those_rows_codes_and_answers_as_the_index_over_every_list(factory):
    """The evaluation's sample of an IVF index: the same quantizer and stored codes, only the sample's
    entries; over every list it ranks exactly as the filtered search does, and the index is left as it was."""
    from lookalike.stages.index.factory import IndexType, build_index, prepare_vectors, search, subset_index
    from lookalike.stages.index.whitening import fit_whitening

    vectors = prepare_vectors(np.random.default_rng(1).standard_normal((800, 8)).astype(np.float32), "l2")
    row_ids = np.arange(800, dtype=np.int64) * 5 + 2
    whitening = fit_whitening(vectors, 0.5)
    index = whitening.wrap(build_index(whitening.apply(vectors), row_ids, IndexType(factory, "l2", False)))
    ivf = faiss.extract_index_ivf(index)
    before = search(index, vectors[:20], 10)
    allowed = row_ids[::9]
    subset = subset_index(index, allowed)
    assert subset.ntotal == len(allowed) and index.ntotal == ivf.ntotal == 800
    assert np.array_equal(search(index, vectors[:20], 10)[1], before[1])  # the index still holds every row
    inner = faiss.extract_index_ivf(subset)
    assert inner.nprobe == ivf.nprobe < ivf.nlist and set(search(subset, vectors[:20], 10)[1].ravel()) <= {
        *allowed.tolist(),
        -1,
    }
    inner.nprobe = ivf.nprobe = ivf.nlist  # every list, in both: exact over the stored codes
    expected, got = search(index, vectors[:20], 10, allowed), search(subset, vectors[:20], 10)
    assert np.array_equal(got[1], expected[1]) and np.allclose(got[0], expected[0], atol=1e-5)
