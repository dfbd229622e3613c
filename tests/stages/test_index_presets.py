"""FAISS presets on enough vectors to train IVF/PQ: sizing from N, search knobs, round trips."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from lookalike.stages.index.factory import (
    PRESETS,
    IndexBuildError,
    IndexType,
    apply_search_params,
    build_index,
    choose_nlist,
    choose_pq,
    plan_factory,
    prepare_vectors,
    recall_vs_exact,
    sample_queries,
    search_params_for,
    self_retrieval_at_1,
)


@pytest.fixture(scope="module")
def clustered():
    """3,000 vectors in 30 tight clusters (like embeddings of 30 kinds of thing), sparse row ids."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 64)).astype(np.float32) * 4
    vectors = centres[rng.integers(0, 30, 3000)] + rng.standard_normal((3000, 64)).astype(np.float32)
    return np.ascontiguousarray(vectors, dtype=np.float32), np.arange(3000, dtype=np.int64) * 7 + 5


def concrete(name: str, n: int, dim: int) -> IndexType:
    preset = PRESETS[name]
    return plan_factory(preset, n, dim, preset=name)


def test_nlist_follows_faiss_guidance():
    assert choose_nlist(3000) == 3000 // 39  # 39 points per centroid binds below ~24k vectors
    assert choose_nlist(1_000_000) == 4000  # 4·sqrt(N)
    with pytest.raises(IndexBuildError, match="needs at least 156 vectors"):
        choose_nlist(100)


def test_pq_code_is_a_sixteenth_of_float32_and_bits_shrink_for_small_n():
    assert choose_pq(100_000, 512) == (128, 8)
    assert choose_pq(3000, 512) == (128, 6)  # 3000/39 = 76 points -> 2**6 centroids
    assert choose_pq(70_000, 784) == (196, 8)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_round_trips_with_its_knobs_and_finds_itself(clustered, tmp_path, name):
    vectors, row_ids = clustered
    kind = concrete(name, *vectors.shape)
    vectors = prepare_vectors(vectors, kind.metric)
    index = build_index(vectors, row_ids, kind)
    # Isotropic noise inside clusters is 4-bit PQ's worst case: re-rank 16x candidates there.
    params = search_params_for(index, nprobe=16, ef_search=64, k_factor=16)
    expected = {"nprobe"} if name.startswith("ivf") else {"efSearch"} if name == "hnsw" else set()
    assert set(params) == expected | ({"k_factor_rf"} if name.endswith("rflat") else set())
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    loaded = faiss.read_index(str(tmp_path / "i.faiss"))
    apply_search_params(loaded, params)
    if "nprobe" in params:
        assert faiss.extract_index_ivf(loaded).nprobe == 16
    if "k_factor_rf" in params:  # the refine wrapper sits inside the IndexIDMap2 that maps row ids
        assert faiss.downcast_index(faiss.downcast_index(loaded).index).k_factor == 16
    queries = sample_queries(len(vectors))
    _, found = loaded.search(vectors[:20], 5)
    assert set(found.ravel()) <= set(row_ids.tolist())
    self_at_1 = self_retrieval_at_1(loaded, vectors[queries], row_ids[queries])
    assert self_at_1 == 1.0 if kind.exact else self_at_1 >= 0.99
    recall = recall_vs_exact(loaded, vectors, row_ids, queries, kind, 10)
    assert recall == 1.0 if kind.exact else 0.3 <= recall <= 1.0


def test_more_probes_find_more_true_neighbours(clustered):
    vectors, row_ids = clustered
    kind = IndexType("IVF76,Flat", "l2", exact=False)
    index = build_index(vectors, row_ids, kind)
    queries = sample_queries(len(vectors))[:500]
    recalls = []
    for nprobe in (1, 76):
        apply_search_params(index, {"nprobe": nprobe})
        recalls.append(recall_vs_exact(index, vectors, row_ids, queries, kind, 10))
    assert recalls[0] < recalls[1] == 1.0  # probing every list is exact search


SAMPLE_IMAGES = 700  # enough to train every preset (4-bit PQ needs 624), seconds to embed
SAMPLE_SETTINGS = {"dataset.limit": SAMPLE_IMAGES, "encoder.epochs": 0, "encoder.input_size": 16}


@pytest.fixture(scope="module")
def sample_embeddings(tmp_path_factory):
    """Embeddings of 700 bundled sample images (random-init encoder: no training needed)."""
    from lookalike.core.settings import load_settings
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage

    root = tmp_path_factory.mktemp("sample") / "artifacts"
    settings = load_settings({**SAMPLE_SETTINGS, "artifacts_root": str(root)})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    return settings, root, run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_on_the_sample_returns_row_ids_and_finds_itself(sample_embeddings, name):
    from lookalike.stages.embeddings.shards import load_embeddings
    from lookalike.stages.index.factory import load_index, search
    from lookalike.stages.index.stage import run_index_stage

    settings, root, embeddings = sample_embeddings
    stats = run_index_stage(settings.index.model_copy(update={"type": name}), embeddings, root).manifest
    index = load_index(root, stats)  # read back from index.faiss, sha256-checked, knobs applied
    stats = stats.stats
    vectors, row_ids = load_embeddings(root, embeddings)
    _, found = search(index, prepare_vectors(vectors[:50], stats["metric"]), 5)
    assert set(found.ravel()) <= set(row_ids.tolist()) and stats["ntotal"] == SAMPLE_IMAGES
    assert stats["self_retrieval_at_1"] == 1.0 if stats["exact"] else stats["self_retrieval_at_1"] >= 0.99


# Every index type through the whole evaluation and a query, in a worker process: FAISS can abort the
# process from C++ (issue 44: HNSW's range search threw inside an OpenMP region), and an abort in the test
# process would end the whole test run instead of failing one case.
RAW_FACTORIES = [
    "PCA64,Flat",  # flat, behind a transform inside the id map
    "ip:IVF8,PQ16x4fs,RFlat",  # IVF fast-scan under a refine, inner product
    "ip:HNSW16",  # HNSW, inner product
    "HNSW16_PQ8x4",  # HNSW over PQ codes (which take no ID selector)
    "PQ32x4fs",  # fast-scan PQ without IVF
    "NSG16,Flat",  # a graph without range search
]
EVERY_INDEX_TYPE = [*sorted(PRESETS), "auto", *RAW_FACTORIES]
# Evaluation settings of the worker. efSearch 512: FAISS checks for interrupts every 1e8 / (levels x dim x
# efSearch) queries, and HNSW's range search aborted when one call held more queries than that: at 3,000
# images and the default 64 on the sample it did; at 700 images it takes a wider search to get there.
EVERY_INDEX_SETTINGS = {
    "index.ef_search": 512,
    "evaluation.k": 5,
    "evaluation.max_queries": 64,
    "evaluation.grid_queries": 2,
    "evaluation.grid_neighbours": 3,
    "evaluation.baselines": [],  # exact search on their own vectors, not the index: measured once, below
}
BASELINES_ONCE = "flat-l2"  # the case that also measures the default baselines


def _evaluate_every_index_type(root: str, settings: dict, cases: list[str]) -> None:
    """The worker (this file run as a script): for each index type, build its index over the sample
    embeddings, run the evaluation stage (metrics, leaks, duplicates, map; baselines once) and query it
    by image, unfiltered and through a selective and a broad filter; one JSON line per case."""
    import json
    import sys
    import time
    import traceback

    from lookalike.core.settings import EvaluationSettings, load_settings
    from lookalike.serving.query import Chain, Searcher
    from lookalike.stages.dataset.stage import run_dataset_stage
    from lookalike.stages.embeddings.stage import run_embeddings_stage
    from lookalike.stages.encoder.stage import run_encoder_stage
    from lookalike.stages.evaluation.stage import query_dataset_section, run_evaluation_stage
    from lookalike.stages.index.stage import run_index_stage

    settings = load_settings({**settings, "artifacts_root": root})
    dataset = run_dataset_stage(settings.dataset, root).manifest
    queries = run_dataset_stage(query_dataset_section(settings.dataset, settings.evaluation, root), root).manifest
    encoder = run_encoder_stage(settings.encoder, dataset, root).manifest
    embeddings = run_embeddings_stage(settings.embeddings, dataset, encoder, root).manifest
    for name in cases:
        print(json.dumps({"case": name, "started": True}), flush=True)
        started = time.perf_counter()
        try:
            section = settings.evaluation
            if name == BASELINES_ONCE:
                section = section.model_copy(update={"baselines": EvaluationSettings().baselines})
            index = run_index_stage(settings.index.model_copy(update={"type": name}), embeddings, root).manifest
            stats = run_evaluation_stage(section, dataset, embeddings, index, root, queries).manifest.stats
            searcher = Searcher(root, Chain(dataset, encoder, embeddings, index))
            rows = sorted(searcher.position)
            images = [searcher.image_of_row(r) for r in rows[:3]]
            # 40 rows: answered by exhaustive search (factory.EXACT_BELOW); 400: by the index's own search
            wheres = {"all": None, "few": f"row<={rows[39]}", "many": f"row>={rows[300]}"}
            found = {
                what: [[hit["row"] for hit in hits] for hits in searcher.search_images(images, 5, where)]
                for what, where in wheres.items()
            }
            found["rows"] = rows
            outcome = {"case": name, "evaluation": stats, "found": found, "seconds": time.perf_counter() - started}
        except Exception:
            outcome = {"case": name, "error": traceback.format_exc()[-3000:]}
        print(json.dumps(outcome, default=str), flush=True)
    sys.exit(0)


@pytest.fixture(scope="module")
def every_index_type(sample_embeddings):
    """case -> the worker's JSON for it, or {"crashed": ...} for the case a worker died in (a new worker
    then takes the cases after it)."""
    import json
    import subprocess
    import sys

    _, root, _ = sample_embeddings
    base = {**SAMPLE_SETTINGS, **EVERY_INDEX_SETTINGS}
    outcomes: dict[str, dict] = {}
    todo = list(EVERY_INDEX_TYPE)
    while todo:
        done = subprocess.run(
            [sys.executable, __file__, str(root), json.dumps(base), json.dumps(todo)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        started = None
        for line in done.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("started"):
                started = record["case"]
            else:
                outcomes[record["case"]] = record
                started = None
        if done.returncode != 0 or started is not None:
            where = started or (todo[len(outcomes)] if len(outcomes) < len(todo) else "?")
            outcomes[where] = {"case": where, "crashed": done.returncode, "stderr": done.stderr[-3000:]}
        todo = [case for case in todo if case not in outcomes]
    return outcomes


@pytest.mark.parametrize("name", EVERY_INDEX_TYPE)
def test_every_index_type_runs_the_whole_evaluation_and_answers_queries(every_index_type, name):
    outcome = every_index_type[name]
    assert "crashed" not in outcome, (
        f"{name}: the worker died (exit {outcome.get('crashed')}):\n{outcome.get('stderr')}"
    )
    assert "error" not in outcome, f"{name}:\n{outcome['error']}"
    stats = outcome["evaluation"]
    assert stats["knn_accuracy"] is not None and stats["leaks"]["threshold"] is not None
    assert stats["duplicates"]["n_images"] == SAMPLE_IMAGES and stats["map"]["n_rows"] == SAMPLE_IMAGES
    if name == BASELINES_ONCE:
        assert set(stats["baselines"]) == {"pixels", "init"}
    found = outcome["found"]
    assert all(len(hits) == 5 for hits in found["all"])
    rows = found["rows"]
    assert all(len(hits) == 5 and all(r <= rows[39] for r in hits) for hits in found["few"])
    assert all(len(hits) == 5 and all(r >= rows[300] for r in hits) for hits in found["many"])


if __name__ == "__main__":
    import json
    import sys

    _evaluate_every_index_type(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))
